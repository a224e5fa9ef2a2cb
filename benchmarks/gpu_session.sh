#!/usr/bin/env bash
# The GPU session: benchmarks/gpu_session.py says everything (its docstring). In short:
#   bash benchmarks/gpu_session.sh --fetch-wheels   # here, before the lease (what the GPU image lacks, into .whl/)
#   bash benchmarks/gpu_session.sh --dry-run        # here, under the simulator: every step, small, limits scaled
#   bash benchmarks/gpu_session.sh                  # the device tool's command: carry [".whl"], timeout_s 600
# PY picks the interpreter (default: .venv/bin/python for a dry run where it exists, else python3).
cd "$(dirname "$0")/.." || exit 2
if [ -z "${PY:-}" ]; then
    PY=python3
    case " $* " in *" --dry-run "*|*" --fetch-wheels "*) [ -x .venv/bin/python ] && PY=.venv/bin/python ;; esac
fi
exec "$PY" benchmarks/gpu_session.py --python "$(command -v "$PY" || echo "$PY")" "$@"
