#!/usr/bin/env bash
# The floor check: the oldest stack the package is tested with (crossformer_mm/version.py's
# MIN_VERSIONS; the prebuilt upstream OpenMMLab stack), built with tools/setup_env.sh and running
# the registration, version, op, backbone, tool and checkpoint-loading tests (docs/testing.md,
# "Floor environment").
#
#   bash tools/run_floor_tests.sh [pytest args...]
#
# torch 2.1.2 + torchvision 0.16.2 (PyPI's CUDA 12.1 builds, which run on a CPU-only machine),
# numpy 1.26.4, mmcv 2.1.0 compiled for that torch, and the pinned mmengine / mmdet / mmseg /
# mmpretrain of requirements/mminstall.txt. The committed HEAD is cloned into $CFM_FLOOR_DIR/src,
# because the editable install compiles the native op in place, next to the sources, for that
# torch (a checkout shared with the default environment would get the wrong build).
#
# Knobs: CFM_FLOOR_DIR (default ~/.cache/crossformer_mm/floor: src/ and .venv/ live there),
# CFM_CACHE (as for tools/setup_env.sh: where the built mmcv wheels are kept).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${CFM_FLOOR_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/crossformer_mm/floor}
SRC=$DIR/src
mkdir -p "$DIR"
if [ -d "$SRC/.git" ]; then
  git -C "$SRC" fetch -q "$ROOT" HEAD
  git -C "$SRC" checkout -q --detach FETCH_HEAD
else
  git clone -q "$ROOT" "$SRC"
  git -C "$SRC" checkout -q --detach "$(git -C "$ROOT" rev-parse HEAD)"
fi

CFM_TORCH='torch==2.1.2 torchvision==0.16.2' CFM_NUMPY='numpy==1.26.4' CFM_VENV=$DIR/.venv \
  bash "$SRC/tools/setup_env.sh"

cd "$SRC"
"$DIR/.venv/bin/python" - <<'PY'
import importlib
import platform
print('floor environment: python', platform.python_version(), end='')
for name in ('torch', 'torchvision', 'numpy', 'mmengine', 'mmcv', 'mmdet', 'mmseg',
             'mmpretrain', 'triton'):
    print(f', {name}', importlib.import_module(name).__version__, end='')
print()
PY
# Tests of what needs torch >= 2.4 (the registered op: torch.library.custom_op, its compile and
# export) carry the needs_custom_op marker and are deselected; that on this torch those features
# say so in one line is tested here (docs/testing.md). This -m replaces pyproject's, hence
# 'not slow' again.
exec "$DIR/.venv/bin/python" -m pytest -p no:cacheprovider -q \
  -m 'not slow and not needs_custom_op' \
  tests/test_registration.py tests/test_registry.py tests/test_version.py tests/test_setup.py \
  tests/ops tests/models/backbones tests/tools tests/compat/test_checkpoint.py "$@"
