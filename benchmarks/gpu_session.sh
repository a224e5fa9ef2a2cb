#!/usr/bin/env bash
# Everything a session with a CUDA machine should run, in ONE device-tool call (device
# time is short). Prepare here first (no device time):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl lz4==4.4.5
# then call the device tool with carry [".whl"] and the command
#   bash benchmarks/gpu_session.sh
# Results (test log, benchmark text and JSON, named by GPU and date) land in $OUT;
# copy them into benchmarks/results/ and quote them.
set -euo pipefail
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1
# the image has numba, numba-cuda, cupy, pytest, hypothesis; a venv that sees them, plus
# lz4 from the carried wheel and devpool itself (editable: devpool.kernels maps to kernels/)
python3 -m venv --system-site-packages /tmp/venv
/tmp/venv/bin/pip install -q --no-index --no-deps .whl/*.whl
/tmp/venv/bin/pip install -q --no-index --no-deps --no-build-isolation -e .
py=/tmp/venv/bin/python
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-')
day=$(date +%F)
nvidia-smi > "$OUT/nvidia-smi-$gpu-$day.txt" || true
$py -m devpool._cli info | tee "$OUT/info-$gpu-$day.txt"
set +e
# each step has its own time limit (they add up to 500 s, under the device tool's 600 s
# per command with the setup above), so one slow step cannot take the others' results
# with it; the figures issue 6 asks for come first
timeout 70 $py benchmarks/bench_lz4_device.py --json "$OUT/bench_lz4_device-$gpu-$day.json" 2>&1 \
    | tee "$OUT/bench_lz4_device-$gpu-$day.txt"
timeout 45 $py benchmarks/bench_device.py --pages "${PAGES:-}" --json "$OUT/bench_device-$gpu-$day.json" 2>&1 \
    | tee "$OUT/bench_device-$gpu-$day.txt"
timeout 210 $py -m pytest --gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-$gpu-$day.txt"
timeout 45 $py benchmarks/bench_lz4.py --device --max-pages 4096 --repeats 3 \
    --json "$OUT/bench_lz4-device-$gpu-$day.json" 2>&1 | tee "$OUT/bench_lz4-device-$gpu-$day.txt"
# zswap on the GPU pool: lz4-device keeps blocks on the device (pages cross PCIe raw),
# lz4-njit compresses on the host CPUs and ships blocks; each against the lz4.block loop
for c in lz4-device lz4-njit; do
    timeout 45 $py benchmarks/bench_zswap.py --backend cuda --compressor $c --max-pages 8192 --batch 4096 \
        --repeats 3 --latency-pages 200 --json "$OUT/bench_zswap-cuda-$c-$gpu-$day.json" 2>&1 \
        | tee "$OUT/bench_zswap-cuda-$c-$gpu-$day.txt"
done
timeout 40 $py -m devpool._cli bench --backend cuda --quiet --max-pages 8192 --json "$OUT/devpool-bench-$gpu-$day.json" \
    --plot "$OUT/devpool-bench-$gpu-$day.png" 2>&1 | tee "$OUT/devpool-bench-$gpu-$day.txt"
