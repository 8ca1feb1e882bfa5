#!/usr/bin/env bash
# The main job: set up the environment, generate the demo data if missing, train the demo detector,
# evaluate it with COCO metrics and save pictures of its predictions on val images.
# Training skips its end-of-training validation (val_begin past the last epoch): tools/test.py
# evaluates the same last checkpoint on the same val set, with the pictures.
#
#   bash tools/run_demo.sh [CONFIG] [extra tools/train.py args...]
#
# WORK_DIR (default work_dirs/<config name>) receives logs, checkpoints, metrics and vis/ pictures.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONFIG=${1:-configs/demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py}
NAME=$(basename "$CONFIG" .py)
WORK_DIR=${WORK_DIR:-work_dirs/$NAME}

bash tools/setup_env.sh
PY=.venv/bin/python
START=$(date +%s)
"$PY" tools/make_demo_data.py --out data --only coco
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --cfg-options train_cfg.val_begin=100000 \
  "${@:2}"
CKPT=$(cat "$WORK_DIR/last_checkpoint")
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR" --show-dir vis
echo "demo finished in $(( $(date +%s) - START ))s; checkpoint $CKPT;" \
  "prediction pictures under $WORK_DIR/<timestamp>/vis"
