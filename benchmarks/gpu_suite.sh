#!/usr/bin/env bash
# The GPU check, on a bare CUDA machine (torch + triton; no OpenMMLab package, no compiled
# crossformer_mm._ext, no network needed):
#   1. the Triton MSDA kernels: checks against the float64 reference and timings
#      (benchmarks/gpu_suite.py);
#   2. the models, when the OpenMMLab stack imports or its wheels were carried into .whl/
#      (benchmarks/gpu_suite_wheels.sh, on a machine with network): Deformable DETR R50 and
#      CrossFormer-S training steps under AMP float16 / bfloat16 and inference, a Mask R-CNN
#      CrossFormer-S training step under AMP, peak GPU memory, Triton against mmcv's CUDA MSDA
#      (benchmarks/gpu_models.py). The carried wheels are installed with `pip --no-index
#      --no-deps --target .whl/site` (only those the machine lacks); mmcv's ops are built from
#      its sdist for this GPU's architecture in the background while step 1 runs; steps that
#      need them say they were skipped, and why, when the build did not finish.
#
#   bash benchmarks/gpu_suite.sh                  # on a CUDA machine, about 8 minutes
#   bash benchmarks/gpu_suite.sh --smoke          # tiny shapes on the CPU (Triton interpreter)
#   PYTHON=/path/to/python bash benchmarks/gpu_suite.sh --dtypes float32
#
# Arguments go to benchmarks/gpu_suite.py. Knobs (environment):
#   PYTHON               the interpreter (default python3)
#   GPU_SUITE_WHEELS     the carried wheels (default <repo>/.whl; also its part-N/ folders)
#   GPU_SUITE_INSTALL_ONLY  1: install the carried wheels, then stop (for each part but the last)
#   GPU_SUITE_MODELS     0: the op suite only (default 1)
#   GPU_MODELS_ARGS      extra arguments of benchmarks/gpu_models.py
#   MMCV_BUILD           cuda (default: mmcv's CPU and CUDA ops for this GPU), cpu, or none
#   MMCV_BUILD_TIMEOUT   seconds the mmcv build may take (default 300)
#   MAX_JOBS             parallel compile jobs of the mmcv build (default: cores - 2)
#   GPU_SUITE_TIMEOUT / GPU_MODELS_TIMEOUT   hard limits of the two parts (default 300 / 180 s)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WHL=${GPU_SUITE_WHEELS:-$ROOT/.whl}
MODELS=${GPU_SUITE_MODELS:-1}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
log() { echo "[gpu_suite $(( $(date +%s) - START ))s] $*"; }

SMOKE=0
for arg in "$@"; do
  if [ "$arg" = "--smoke" ]; then
    SMOKE=1
    export TRITON_INTERPRET=1  # must be set before triton is imported
  fi
done

# 1. The OpenMMLab stack from the carried wheels, when it does not import already.
BUILD_PID=
if [ "$MODELS" = 1 ] && ! "$PY" -c "import mmdet" >/dev/null 2>&1 && [ -d "$WHL" ]; then
  SITE=$WHL/site
  # The wheels of distributions the interpreter lacks (its own numpy, pillow ... are kept), and
  # setuptools < 82 in any case: mmcv's setup.py and mmengine's config loader need pkg_resources.
  # The wheels may come in parts (.whl/part-N/, one per transfer): those installed into $SITE by
  # an earlier part count as present.
  mapfile -t MISSING < <("$PY" - "$WHL" "$SITE" <<'PY'
import glob, os, sys
sys.path.append(sys.argv[2])
from importlib import metadata
for wheel in sorted(glob.glob(os.path.join(sys.argv[1], '*.whl')) +
                    glob.glob(os.path.join(sys.argv[1], 'part-*', '*.whl'))):
    name = os.path.basename(wheel).split('-')[0]
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(wheel)
    else:
        if name == 'setuptools':
            print(wheel)
PY
)
  if [ "${#MISSING[@]}" -gt 0 ]; then
    log "installing ${#MISSING[@]} carried wheels into $SITE"
    "$PY" -m pip install --disable-pip-version-check --no-index --no-deps -q --upgrade \
      --target "$SITE" "${MISSING[@]}"
  fi
  if [ "${GPU_SUITE_INSTALL_ONLY:-0}" = 1 ]; then
    log "installed this part's wheels (GPU_SUITE_INSTALL_ONLY=1); carry the next part"
    exit 0
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE" PATH="$SITE/bin:$PATH"
  # mmcv ships as an sdist: its Python code runs from the unpacked source, its ops are built
  # there (in place) for this GPU.
  SDIST=$(ls "$WHL"/mmcv-*.tar.gz "$WHL"/part-*/mmcv-*.tar.gz 2>/dev/null | head -n 1 || true)
  if [ -n "$SDIST" ]; then
    SRC=$WHL/build/$(basename "$SDIST" .tar.gz)
    if [ ! -d "$SRC" ]; then
      mkdir -p "$WHL/build"
      tar -xzf "$SDIST" -C "$WHL/build"
      # torch >= 2.14's headers need C++20; mmcv's setup.py hard-codes C++14/17 (as
      # tools/setup_env.sh, which builds it the same way).
      if "$PY" -c "import torch, sys; v = tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])); sys.exit(0 if v >= (2, 14) else 1)"; then
        sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
      fi
    fi
    export PYTHONPATH="$PYTHONPATH:$SRC"
    MODE=${MMCV_BUILD:-cuda}
    if [ "$SMOKE" = 1 ] && [ "$MODE" = cuda ]; then MODE=cpu; fi
    if [ "$MODE" != none ] && ! ls "$SRC"/mmcv/_ext*.so >/dev/null 2>&1; then
      ARCH=
      if [ "$MODE" = cuda ]; then
        ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
      fi
      JOBS=${MAX_JOBS:-$(( $(nproc) > 4 ? $(nproc) - 2 : $(nproc) ))}
      log "building mmcv's ops in the background (${ARCH:+CUDA for $ARCH, }$JOBS jobs, at most ${MMCV_BUILD_TIMEOUT:-300} s; log: $WHL/build/mmcv-build.log)"
      (
        cd "$SRC"
        if [ -n "$ARCH" ]; then
          export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH
        else
          export CUDA_VISIBLE_DEVICES=  # no GPU visible: mmcv builds its CPU ops only
        fi
        MMCV_WITH_OPS=1 MAX_JOBS=$JOBS timeout "${MMCV_BUILD_TIMEOUT:-300}" \
          "$PY" setup.py build_ext --inplace >"$WHL/build/mmcv-build.log" 2>&1
      ) &
      BUILD_PID=$!
    fi
  fi
fi

# 2. The op suite.
STATUS=0
timeout "${GPU_SUITE_TIMEOUT:-300}" "$PY" "$ROOT/benchmarks/gpu_suite.py" "$@" || STATUS=$?

# 3. The models.
if [ -n "$BUILD_PID" ]; then
  if wait "$BUILD_PID"; then
    log "mmcv's ops built"
  else
    log "the mmcv build failed or ran out of time (last lines of $WHL/build/mmcv-build.log below);" \
        "the steps that need mmcv's ops are skipped"
    tail -n 5 "$WHL/build/mmcv-build.log" || true
  fi
fi
if [ "$MODELS" = 1 ]; then
  DEVICE_ARGS=()
  if [ "$SMOKE" = 1 ]; then DEVICE_ARGS=(--device cpu --tiny); fi
  # shellcheck disable=SC2086  (the knob holds several arguments)
  timeout "${GPU_MODELS_TIMEOUT:-180}" "$PY" "$ROOT/benchmarks/gpu_models.py" \
    "${DEVICE_ARGS[@]}" ${GPU_MODELS_ARGS:-} || { [ "$STATUS" != 0 ] || STATUS=1; }
fi
log "done"
exit "$STATUS"
