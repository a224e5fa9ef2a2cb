#!/usr/bin/env bash
# Everything a CUDA machine should answer, in ONE device-tool call (device time is short),
# figures that matter most first. Prepare here (no device time), in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl lz4==4.4.5 zstandard==0.25.0 \
#       nvidia-nvcomp-cu13==6.0.0.12 nvidia-libnvcomp-cu13==6.0.0.12
# (the image has numpy, numba, numba-cuda, CuPy, pytest and hypothesis; not these; 40 MB)
# then call the device tool with carry [".whl"], timeout_s 600 and the command
#   bash benchmarks/gpu_session.sh
# Every result lands in one archive, $OUT/gpu-session-<gpu>-<date>.tar.gz, written by an
# EXIT trap (whatever step fails or times out), plus its summary.txt beside it. Untar it
# into benchmarks/results/ and quote it.
# The steps share one budget (BUDGET, 540 s by default): each step's limit is cut to what
# is left, so the script ends inside the tool's 600 s command limit, and the archive is
# re-packed after every step. If the smoke step fails, a diagnosis step runs and the
# script stops, leaving device time for a rerun.
# DRYRUN=1 runs the same steps here without a GPU (the simulator; no --gpu), to check the
# script itself (limits x3): DRYRUN=1 PY=.venv/bin/python OUT=/tmp/gpu-dry bash benchmarks/gpu_session.sh
# (2026-11-30, 2 vCPUs, 699f12e: every step it runs passed, pytest-gpu in 173 s and
# bench_region in 219 s of their x3 limits; check-kernels and pytest-rest are GPU-only).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac   # the steps run elsewhere
R=/tmp/devpool-results
rm -rf "$R" && mkdir -p "$R"
SCALE=1
if [ "${DRYRUN:-0}" = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1; GPU_FLAG=""; gpu=dryrun; SCALE=3      # the simulator is slow
else
    GPU_FLAG="--gpu"
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-')
    gpu=${gpu:-unknown-gpu}
fi
day=$(date +%F)
pack() {
    cp "$R/summary.txt" "$OUT/summary-$gpu-$day.txt" 2>/dev/null
    tar czf "$OUT/gpu-session-$gpu-$day.tar.gz" -C "$R" . && echo "results: $OUT/gpu-session-$gpu-$day.tar.gz"
}
trap pack EXIT
say() { echo "== $*" | tee -a "$R/summary.txt"; }
# step NAME SECONDS CMD...: run with a limit (cut to what is left of the session's BUDGET
# seconds, so the whole script ends inside the device tool's one-command limit), log to
# NAME.txt, record the exit status, and re-pack the archive (a kill at the tool's limit
# still leaves every finished step's output under $OUT)
BUDGET=${BUDGET:-540}
LAST_RC=0
step() {
    local name=$1 limit=$(($2 * SCALE)); shift 2
    local left=$((BUDGET * SCALE - SECONDS))
    if [ "$left" -lt 15 ]; then say "$name: skipped, $left s of the session's budget left"; return 0; fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    timeout "$limit" "$@" > "$R/$name.txt" 2>&1
    local rc=$?
    LAST_RC=$rc
    say "$name: exit $rc in $((SECONDS - t0)) s (limit $limit s)"
    tail -n 25 "$R/$name.txt"
    pack > /dev/null
    return 0
}

# --- install: carried wheels and devpool itself, no venv (the image's python3 is one) ----
say "install"
SITE=/tmp/devpool-site
rm -rf "$SITE"
if [ "${DRYRUN:-0}" = 1 ]; then
    SITE=""                                                  # the wheels are for the image's Python
else
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        > "$R/install.txt" 2>&1 || { say "installing the carried wheels failed"; cat "$R/install.txt"; }
fi
# devpool as installed: the package with kernels/ and host/ inside it (setuptools'
# package-dir), assembled in a run directory the tests import it from
RUN=/tmp/devpool-run
rm -rf "$RUN" && mkdir -p "$RUN"
cp -r tests benchmarks pyproject.toml README.md "$RUN"/
cp -r devpool "$RUN"/devpool && cp -r kernels "$RUN"/devpool/kernels && cp -r host "$RUN"/devpool/host
export PYTHONPATH="$RUN${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
# the CLI tests start the `devpool` script beside the interpreter
BIN=$(dirname "$($PY -c 'import sys; print(sys.executable)')")
[ -e "$BIN/devpool" ] || printf '#!/bin/sh\nexec %s -m devpool.cli "$@"\n' "$BIN/python3" > "$BIN/devpool" \
    && chmod +x "$BIN/devpool" 2>/dev/null
cd "$RUN"
{ nvidia-smi 2>&1 || true; $PY -m pip list 2>/dev/null | grep -iE "numpy|numba|cupy|cuda|nvcomp|lz4|zstandard|pytest"; } \
    > "$R/environment.txt"

# --- smoke (a minute at most): every device path once, small -----------------------------
step smoke 60 $PY - <<'EOF'
import numpy as np, devpool
from tests.pages import make_pages
print(devpool.available_backends())
pool = devpool.open_pool("cuda", 1 << 24)
rng = np.random.default_rng(0)
sizes = rng.integers(1, 4097, 500)
hs = pool.alloc_batch(sizes)
payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
pool.write_batch(hs, payload, sizes)
assert pool.read_batch(hs)[0].tobytes() == payload.tobytes(), "batch round trip"
h = pool.alloc(4096); page = rng.integers(0, 256, 4096, dtype=np.uint8)
pool.write(h, page); assert pool.read(h).tobytes() == page.tobytes(), "single page"
pool.free_batch(hs[::2]); pool.compact()
assert pool.read_batch(hs[1::2])[0].tobytes() == b"".join(payload[s:s + n].tobytes() for s, n in
    zip(np.concatenate([[0], np.cumsum(sizes)[:-1]])[1::2], sizes[1::2])), "after compaction"
import tempfile
with tempfile.TemporaryDirectory(prefix="devpool-smoke-") as tmp:
    for codec in ("lz4-device", "lz4-njit"):
        zs = devpool.Zswap(pool, codec, max_pool_percent=100, backing=f"{tmp}/{codec}")
        pages = make_pages(256, rng, ("text", "struct", "random", "zero"))
        zs.store_batch(np.arange(256), pages)
        assert (zs.load_batch(np.arange(256)) == pages).all(), codec
        zs.close()
print("SMOKE OK", pool.stats()["device"])
EOF

if [ "$LAST_RC" != 0 ]; then
    # the device paths do not work here: gather what explains it and stop early, so
    # the session's device time is left for a rerun once it is fixed
    step diagnose 60 bash -c "$PY -m numba -s | sed -n '/__CUDA Information__/,/__SVML/p'; \
        $PY -c 'from numba import cuda; cuda.detect()'; \
        $PY -c 'import devpool; print(devpool.available_backends())'"
    say "smoke failed: stopping early"
    exit 1
fi

# --- the figures, most important first (each step's limit is cut to the budget left) ----
step bench_latency 60 $PY benchmarks/bench_latency.py --backends host,cuda --n 1000 \
    --json "$R/bench_latency.json"
# the GPU's own tests: every test that touches the cuda backend, the device kernels, CuPy
# or nvCOMP, on the real device (--gpu); per-test timeout where pytest-timeout is there
TO=""; $PY -c "import pytest_timeout" 2>/dev/null && TO="--timeout 120"
step pytest-gpu 200 $PY -m pytest $GPU_FLAG -q -p no:cacheprovider $TO -rfE \
    -k "cuda or device or nvcomp or cupy or check_kernels or numba_setup"
SMOKE=""; [ "${DRYRUN:-0}" = 1 ] && SMOKE="--smoke"
step bench_device 40 $PY benchmarks/bench_device.py $SMOKE --json "$R/bench_device.json"
step bench_lz4_device 60 $PY benchmarks/bench_lz4_device.py $SMOKE --json "$R/bench_lz4_device.json"
MAXP=8192; [ "${DRYRUN:-0}" = 1 ] && MAXP=64
step devpool-bench 40 $PY -m devpool.cli bench --backend cuda --quiet --max-pages $MAXP --sweep 1,16,256 \
    --json "$R/devpool-bench.json" --plot "$R/devpool-bench.png"
RP=4096; RA=10000; [ "${DRYRUN:-0}" = 1 ] && { RP=64; RA=200; }
step bench_region 90 $PY benchmarks/bench_region.py --backend cuda --region-pages $RP --accesses $RA \
    --policy-accesses 20000 --delay-sweep "" --json "$R/bench_region.json"
[ "${DRYRUN:-0}" = 1 ] || step check-kernels 30 env -u NUMBA_ENABLE_CUDASIM $PY -m devpool.cli check-kernels --arch sm_90
# the rest of the suite (host, chaos, CLI, region) under this image's Python and packages,
# in parallel where pytest-xdist is there: whatever budget is left
XD=""; $PY -c "import xdist" 2>/dev/null && XD="-n 8"
[ "${DRYRUN:-0}" = 1 ] || step pytest-rest 150 $PY -m pytest $GPU_FLAG -q -p no:cacheprovider $TO $XD -rfE \
    -k "not (cuda or device or nvcomp or cupy or check_kernels or numba_setup)" \
    --deselect tests/project/test_packaging.py::test_wheel_maps_top_level_folders_into_the_package \
    --deselect tests/project/test_benchmarks_smoke.py::test_batch_ab_smoke      # needs a git checkout and PyPI
say "done"
