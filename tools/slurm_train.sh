#!/usr/bin/env bash
# Training on a Slurm cluster, one task per GPU (knobs: see tools/slurm_run.sh).
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] [PYTHON=...] \
#     bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
  exit 2
fi
exec bash "$(dirname "${BASH_SOURCE[0]}")/slurm_run.sh" "$1" "$2" train.py "$3" \
  --work-dir="$4" "${@:5}"
