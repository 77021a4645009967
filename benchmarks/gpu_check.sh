#!/usr/bin/env bash
# GPU check (issue 18): on a host with CUDA, train on the bundled MovieLens-100K with the
# producer-consumer loader and report GPU busy share, queries/s and overlap_efficiency with
# the GPU as the consumer (benchmarks/gpu_check.py). Without CUDA: one line, exit 0.
#
#   bash benchmarks/gpu_check.sh                 # after `make venv`
#   bash benchmarks/gpu_check.sh --rounds 3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device on this host (torch.cuda.is_available() is false); nothing measured"
    exit 0
fi
exec "$PY" benchmarks/gpu_check.py "$@"
