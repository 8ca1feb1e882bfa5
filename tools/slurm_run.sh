#!/usr/bin/env bash
# The srun launch shared by tools/slurm_train.sh and tools/slurm_test.sh: one task per GPU.
#   bash tools/slurm_run.sh PARTITION JOB_NAME TOOL [tool args...]   (TOOL: train.py or test.py)
#
# Knobs (environment):
#   GPUS           GPUs (= tasks) in all (default 8)
#   GPUS_PER_NODE  GPUs per node (default: the node's from Slurm, SLURM_GPUS_ON_NODE, inside an
#                  allocation; else GPUS up to 8); GPUS must be a multiple of it
#   CPUS_PER_TASK  CPU cores per task (default 5)
#   SRUN_ARGS      extra srun options for your site (default none)
#   PYTHON         the interpreter (default: the environment's, $CFM_VENV or <repo>/.venv, when
#                  it exists; else python)
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash tools/slurm_run.sh PARTITION JOB_NAME TOOL [args...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
TOOL=$3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GPUS=${GPUS:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
check_count() {  # NAME VALUE: a positive whole number, or a one-line error
  if ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $1 must be a positive whole number, got '$2'" >&2
    exit 2
  fi
}
check_count GPUS "$GPUS"
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}}
check_count GPUS_PER_NODE "$GPUS_PER_NODE"
check_count CPUS_PER_TASK "$CPUS_PER_TASK"
if (( GPUS % GPUS_PER_NODE != 0 )); then
  echo "error: GPUS ($GPUS) must be a multiple of GPUS_PER_NODE ($GPUS_PER_NODE)" >&2
  exit 2
fi
NODES=$(( GPUS / GPUS_PER_NODE ))
if [ -z "${PYTHON:-}" ]; then
  VENV=${CFM_VENV:-$ROOT/.venv}
  if [ -x "$VENV/bin/python" ]; then PYTHON=$VENV/bin/python; else PYTHON=python; fi
fi
# shellcheck disable=SC2086  (SRUN_ARGS holds several options)
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec srun -p "$PARTITION" --job-name="$JOB_NAME" \
  --nodes="$NODES" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 \
  $SRUN_ARGS "$PYTHON" -u "$ROOT/tools/$TOOL" "${@:4}" --launcher slurm
