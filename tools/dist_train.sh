#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun.
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host PORT=29500 bash tools/dist_train.sh ...
# Without GPUs (or with --cpu / CFM_ALLOW_CPU=1) the processes run on gloo (see
# docs/compatibility.md and docs/gpu.md).
set -euo pipefail
CONFIG=$1
NPROCS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python; fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# On a node with NVIDIA GPUs, refuse (one line: the reason and the fix) to start CPU processes
# when torch cannot use the GPUs; --cpu or CFM_ALLOW_CPU=1 runs on the CPU on purpose.
for arg in "${@:3}"; do
  if [ "$arg" = --cpu ]; then export CFM_ALLOW_CPU=1; fi
done
if command -v nvidia-smi >/dev/null 2>&1; then
  PYTHONPATH="$ROOT:${PYTHONPATH:-}" "$PYTHON" "$ROOT/tools/misc/check_env.py" --launch || exit 2
fi
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$NPROCS" --master_port="$PORT" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
