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
# DRYRUN=1 runs the same steps here without a GPU (the simulator; no --gpu), to check
# the script itself (limits x3; on 2 vCPUs the simulator's suite may still outrun its
# step; every other step passed and the archive came back).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
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
# step NAME SECONDS CMD...: run with a limit, log to NAME.txt, record the exit status
step() {
    local name=$1 limit=$(($2 * SCALE)); shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$R/$name.txt" 2>&1
    local rc=$?
    say "$name: exit $rc in $((SECONDS - t0)) s (limit $limit s)"
    tail -n 25 "$R/$name.txt"
    return 0
}

# --- install: carried wheels and devpool itself, no venv (the image's python3 is one) ----
say "install"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$R/install.txt" 2>&1 || { say "installing the carried wheels failed"; cat "$R/install.txt"; }
# devpool as installed: the package with kernels/ and host/ inside it (setuptools'
# package-dir), assembled in a run directory the tests import it from
RUN=/tmp/devpool-run
rm -rf "$RUN" && mkdir -p "$RUN"
cp -r tests benchmarks pyproject.toml README.md "$RUN"/
cp -r devpool "$RUN"/devpool && cp -r kernels "$RUN"/devpool/kernels && cp -r host "$RUN"/devpool/host
export PYTHONPATH="$RUN:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
# the CLI tests start the `devpool` script beside the interpreter
BIN=$(dirname "$($PY -c 'import sys; print(sys.executable)')")
[ -e "$BIN/devpool" ] || printf '#!/bin/sh\nexec %s -m devpool._cli "$@"\n' "$BIN/python3" > "$BIN/devpool" \
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
for codec in ("lz4-device", "lz4-njit"):
    zs = devpool.Zswap(pool, codec, max_pool_percent=100, backing=f"/tmp/devpool-smoke-{codec}")
    pages = make_pages(256, rng, ("text", "struct", "random", "zero"))
    zs.store_batch(np.arange(256), pages)
    assert (zs.load_batch(np.arange(256)) == pages).all(), codec
    zs.close()
print("SMOKE OK", pool.stats()["device"])
EOF

# --- the figures, most important first (step limits add up to 8 minutes with the smoke) ---
[ "${DRYRUN:-0}" = 1 ] || step check-kernels 45 env -u NUMBA_ENABLE_CUDASIM $PY -m devpool._cli check-kernels --arch sm_90
step pytest-cuda 180 $PY -m pytest $GPU_FLAG -q -p no:cacheprovider --deselect \
    tests/test_packaging.py::test_wheel_maps_top_level_folders_into_the_package
SMOKE=""; [ "${DRYRUN:-0}" = 1 ] && SMOKE="--smoke"
step bench_device 40 $PY benchmarks/bench_device.py $SMOKE --json "$R/bench_device.json"
step bench_lz4_device 60 $PY benchmarks/bench_lz4_device.py $SMOKE --json "$R/bench_lz4_device.json"
if [ -f benchmarks/bench_latency.py ]; then
    step bench_latency 30 $PY benchmarks/bench_latency.py --backend cuda --json "$R/bench_latency.json"
fi
MAXP=8192; [ "${DRYRUN:-0}" = 1 ] && MAXP=64
step devpool-bench 40 $PY -m devpool._cli bench --backend cuda --quiet --max-pages $MAXP --sweep 1,16,256 \
    --json "$R/devpool-bench.json" --plot "$R/devpool-bench.png"
if [ -f benchmarks/bench_region.py ]; then
    step bench_region 25 $PY benchmarks/bench_region.py --backend cuda --json "$R/bench_region.json"
fi
say "done"
