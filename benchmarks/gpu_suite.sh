#!/usr/bin/env bash
# GPU check + benchmark of the Triton MSDA kernels on a bare CUDA machine (torch + triton only:
# no OpenMMLab package, no compiled crossformer_mm._ext, nothing installed). See
# benchmarks/gpu_suite.py for what it checks and times.
#
#   bash benchmarks/gpu_suite.sh                  # on a CUDA machine, under 6 minutes
#   bash benchmarks/gpu_suite.sh --smoke          # tiny shapes, CPU, Triton interpreter
#   PYTHON=/path/to/python bash benchmarks/gpu_suite.sh --dtypes float32
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
for arg in "$@"; do
  if [ "$arg" = "--smoke" ]; then
    export TRITON_INTERPRET=1  # must be set before triton is imported
  fi
done
# A hard limit: the suite is sized to finish well inside it.
exec timeout "${GPU_SUITE_TIMEOUT:-360}" "$PY" "$ROOT/benchmarks/gpu_suite.py" "$@"
