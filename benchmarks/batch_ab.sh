#!/bin/bash
# Batch throughput of this checkout's HEAD against another commit, alternating rounds on
# the same pages (`devpool bench`: store_batch / load_batch against the lz4 loops).
#
#   bash benchmarks/batch_ab.sh BASE_COMMIT [ROUNDS] [PAGES.npy]     (BACKEND=host by default)
#
# Each tree (`git archive` of the commit: nothing registered in .git) is installed (not
# editable) into a directory of its own and run with `python -S` and the venv's
# site-packages on PYTHONPATH: an editable install's import hook would otherwise load
# this checkout's devpool for both. The temporary directory goes at the end, also on
# error or interruption.
set -euo pipefail
BASE=${1:?usage: batch_ab.sh BASE_COMMIT [ROUNDS] [PAGES.npy]}
ROUNDS=${2:-3}
PAGES=${3:-}
BACKEND=${BACKEND:-host}     # explicit: under python -S numba-cuda's hook is not loaded
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
# a commit, by its full name: "--force" or "-b x" are no options to smuggle into git here
BASE_SHA=$(git -C "$ROOT" rev-parse --verify --end-of-options "$BASE^{commit}") \
  || { echo "batch_ab.sh: $BASE is not a commit" >&2; exit 2; }
HEAD_SHA=$(git -C "$ROOT" rev-parse --verify HEAD^{commit})
if [ -n "$PAGES" ]; then
  PAGES=$(realpath -- "$PAGES")     # the runs start elsewhere
fi
PY=${PY:-$ROOT/.venv/bin/python}
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
WORK=$(mktemp -d /tmp/devpool-batch-ab-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
for who in base head; do
  sha=$BASE_SHA; [ $who = head ] && sha=$HEAD_SHA
  mkdir -p "$WORK/$who-tree"
  git -C "$ROOT" archive "$sha" | tar -x -C "$WORK/$who-tree"
done
for who in base head; do
  "$PY" -m pip install -q --no-deps --target "$WORK/$who-site" "$WORK/$who-tree"
done
if [ -z "$PAGES" ]; then
  PAGES=$WORK/pages.npy
  (cd "$WORK" && PYTHONPATH="$WORK/head-site:$SITE" "$PY" -S -c \
    "import numpy as np, devpool; np.save('$PAGES', devpool.capture_workloads())")
fi
echo "# batch A/B: HEAD ${HEAD_SHA:0:7} vs base ${BASE_SHA:0:7}, $(date -u +%F), pages $PAGES"
for round in $(seq "$ROUNDS"); do
  for who in base head; do
    # the command line's module moved (devpool._cli -> devpool.cli); use whichever the tree has
    mod=devpool.cli; [ -d "$WORK/$who-site/devpool/cli" ] || mod=devpool._cli
    echo "== $who (round $round)"
    (cd "$WORK" && PYTHONPATH="$WORK/$who-site:$SITE" "$PY" -S -c \
      "import sys; from $mod import main; sys.exit(main())" \
      bench --backend "$BACKEND" --quiet --pages "$PAGES" --max-pages 16384 --sweep 1024) | grep -E "store_batch|load_batch"
  done
done
