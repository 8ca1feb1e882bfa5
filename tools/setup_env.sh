#!/usr/bin/env bash
# Creates (or refreshes) the project's isolated environment in .venv and installs everything the
# package, its tools and its tests need. Idempotent: a second run with nothing changed only checks
# a stamp and a few imports, and never rebuilds mmcv.
#
#   bash tools/setup_env.sh            # torch 2.14.1 + torchvision 0.29.1 (the users' stack)
#   CFM_TORCH=torch==2.13.0 bash tools/setup_env.sh   # another torch, without torchvision
#   PYTHON=/path/to/python bash tools/setup_env.sh
#   CFM_STACK=onedl CFM_VENV=$PWD/.venv-onedl bash tools/setup_env.sh   # the OneDL forks
#
# Environment knobs:
#   PYTHON        interpreter used to create the environment (default: python3)
#   CFM_STACK     which OpenMMLab stack to install (default: upstream):
#                   upstream  the pinned OpenMMLab releases, requirements/mminstall.txt
#                   onedl     the maintained OneDL forks, requirements/mminstall-onedl.txt
#                 Both install under the same import names (mmcv, mmengine, mmdet, ...), so give
#                 each stack its own CFM_VENV; switching an environment's stack uninstalls the
#                 other stack's distributions first.
#   CFM_VENV      where the environment lives (default: <repo>/.venv)
#   CFM_CACHE     where the built mmcv wheels are kept between environments, one per torch
#                 build and stack
#                 (default: ~/.cache/crossformer_mm)
#   CFM_TORCH     torch (and torchvision) requirements on machines without a CUDA torch
#                 (default: chosen for the GPU targets, below; without any, "torch==2.14.1
#                 torchvision==0.29.1": CUDA 13.0 builds, which also run on a CPU-only machine;
#                 "torch==2.13.0" installs that torch without torchvision: the CPU-only build
#                 where the pip index serves one, e.g. PyTorch's CPU index through PIP_INDEX_URL,
#                 or a local CPU wheel; PyPI's Linux wheel is a CUDA build)
#   CFM_NUMPY     the numpy requirement (default: "numpy>=2,<3"; "numpy==1.26.4" for torch < 2.3)
#   CFM_CUDA_ARCHS  the GPUs to serve, as compute capabilities, e.g. "7.0;8.0;9.0" (default: those
#                 of the GPUs nvidia-smi lists; none on a machine without NVIDIA GPUs; "cpu": no
#                 GPU target). Set it on a node without GPUs (a login node) for the GPU nodes.
#   CFM_TOOLKIT   where the CUDA toolkit that compiles mmcv's CUDA ops comes from: auto (default:
#                 a system nvcc whose version matches torch's CUDA, else NVIDIA's toolkit packages
#                 from PyPI, which exist for CUDA 13 only), system, or pypi
# With GPU targets, setup picks the torch build that serves them and the driver (CUDA 12.6 from
# PyTorch's index when a target is Volta 7.0 or the driver is too old for CUDA 13; else the PyPI
# default, CUDA 13.0), prints which and why, and builds mmcv's CUDA ops for the targets only. If the
# interpreter already has a CUDA build of torch, the environment is created with
# --system-site-packages and that torch (and its torchvision, if any) is kept when it serves the
# targets. The decisions live in crossformer_mm/utils/gpu_env.py.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CFM_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
CACHE=${CFM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crossformer_mm}
NUMPY_REQ=${CFM_NUMPY:-numpy>=2,<3}
STACK=${CFM_STACK:-upstream}
case "$STACK" in
  upstream) MM_REQ=requirements/mminstall.txt; OTHER_REQ=requirements/mminstall-onedl.txt ;;
  onedl) MM_REQ=requirements/mminstall-onedl.txt; OTHER_REQ=requirements/mminstall.txt ;;
  *) echo "[setup] CFM_STACK must be 'upstream' or 'onedl', got '$STACK'" >&2; exit 2 ;;
esac
# The mmcv distribution of the stack and its version, as pinned in its requirements file: it is
# the one package built from source (with its compiled ops).
MMCV_DIST=$(sed -n -E 's/^((onedl-)?mmcv)==.*/\1/p' "$ROOT/$MM_REQ")
MMCV_VERSION=$(sed -n -E 's/^(onedl-)?mmcv==([^ ;#]+).*/\2/p' "$ROOT/$MM_REQ")
START=$(date +%s)
GPU_ENV="$ROOT/crossformer_mm/utils/gpu_env.py"
MMCV_RECORD=$VENV/.crossformer_mm-mmcv

log() { echo "[setup $(( $(date +%s) - START ))s] $*"; }

# Everything whose change means the environment must be refreshed.
stamp_of() {
  (
    cd "$ROOT"
    echo "stack=$STACK"
    echo "gpu_targets=$CFM_TARGETS"
    cat tools/setup_env.sh setup.py requirements/*.txt 2>/dev/null
    find crossformer_mm -path '*/csrc/*' -type f 2>/dev/null | LC_ALL=C sort | xargs -r cat
  ) | sha256sum | cut -d' ' -f1
}
# The GPU targets (compute capabilities; empty without GPUs), from CFM_CUDA_ARCHS or nvidia-smi.
TARGETS_PLAN=$("$PY" "$GPU_ENV" targets) || exit 2
eval "$TARGETS_PLAN"
STAMP=$(stamp_of)
STAMP_FILE=$VENV/.crossformer_mm-stamp

# The stack imports, with its compiled ops, and every package has the version pinned in the
# stack's requirements file (distribution names there map to the shared import names).
check_env() {
  "$VENV/bin/python" - "$ROOT/$MM_REQ" <<'PY' >/dev/null 2>&1
import importlib, re, sys
import mmcv.ops, mmpretrain.registry  # noqa: F401
import crossformer_mm  # noqa: F401
modules = {'mmcv': 'mmcv', 'mmengine': 'mmengine', 'mmdet': 'mmdet', 'mmdetection': 'mmdet',
           'mmsegmentation': 'mmseg', 'mmpretrain': 'mmpretrain'}
for line in open(sys.argv[1]):
    m = re.match(r'(?:onedl-)?([a-z]+)==([^\s;#]+)', line)
    if m:
        name = modules[m.group(1)]
        assert importlib.import_module(name).__version__ == m.group(2), name
PY
}

if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] && check_env; then
  log "environment $VENV is up to date"
  exit 0
fi

# 1. The virtual environment, keeping an existing CUDA torch if the interpreter has one.
if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
    log "found a CUDA build of torch in $PY: creating $VENV with --system-site-packages to keep it"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    log "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
# pip, with the noise of unused local index mirrors filtered out (pip's exit status is kept).
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}

# 2. Build tools, then torch (an installed torch is kept as it is).
log "installing build tools"
pip_install -q -r "$ROOT/requirements/build.txt" "$NUMPY_REQ"
# The torch build for the GPU targets (one line: which, and why); an installed torch is kept.
INSTALLED_TORCH=$("$VPY" -c "import torch; print(torch.__version__, torch.version.cuda or 'none')" 2>/dev/null || true)
# shellcheck disable=SC2086  (version and CUDA: two words)
TORCH_PLAN=$(CFM_TORCH=${CFM_TORCH:-} "$PY" "$GPU_ENV" plan-torch ${INSTALLED_TORCH:+--installed $INSTALLED_TORCH}) || exit 2
eval "$TORCH_PLAN"
log "$TORCH_LINE"
if [ -z "$INSTALLED_TORCH" ]; then
  if [ -n "$TORCH_INDEX" ]; then
    "$PY" "$GPU_ENV" probe-index "$TORCH_INDEX" || exit 2
  fi
  log "installing $TORCH_REQ${TORCH_INDEX:+ from $TORCH_INDEX}"
  # shellcheck disable=SC2086  (the knob holds several requirements)
  pip_install -q $TORCH_REQ ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
fi
read -r TORCH_TAG TORCH_CUDA < <("$VPY" -c "import torch; print(torch.__version__.replace('+', '_'), torch.version.cuda or 'none')")
log "torch $TORCH_TAG (CUDA: $TORCH_CUDA; GPU targets: ${CFM_TARGETS:-none})"

# 3. mmcv with its compiled ops. The wheel is cached per torch build (and, by its name, per stack),
#    so a new environment on the same machine installs it in seconds; only a machine's first run
#    compiles it.
# build_mmcv DIST VERSION: builds DIST==VERSION (mmcv or onedl-mmcv) from its sdist into
# $WHEEL_DIR, unless a wheel for it is already there.
build_mmcv() {
  local dist=$1 version=$2 src pkg
  pkg=${dist//-/_}  # the file-name form of the distribution name (sdist and wheel)
  if ls "$WHEEL_DIR/$pkg-$version"-*.whl >/dev/null 2>&1; then
    return 0
  fi
  log "building $dist $version with ops (the long step; done once per torch build, GPU targets and stack)"
  export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  src=$(mktemp -d)
  "$VPY" -m pip download --disable-pip-version-check --no-deps --no-build-isolation \
    --no-binary :all: -d "$src" \
    "$dist==$version" 2>&1 | { grep -v "^WARNING: Location" || true; }
  tar -xzf "$src/$pkg-$version.tar.gz" -C "$src"
  # torch >= 2.14's headers require C++20; mmcv's (and onedl-mmcv's) setup.py hard-codes
  # -std=c++14/-std=c++17.
  if "$VPY" -c "import torch, sys; v = tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])); sys.exit(0 if v >= (2, 14) else 1)"; then
    log "torch >= 2.14: compiling $dist with -std=c++20"
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' \
      "$src/$pkg-$version/setup.py"
  fi
  # --no-cache-dir: pip's own wheel cache would hand back a build made for another torch.
  if ! "$VPY" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation --no-cache-dir \
      -w "$WHEEL_DIR" "$src/$pkg-$version" 2>&1 | { grep -v "^WARNING: Location" || true; }; then
    rm -rf "$src"
    echo "[setup] building $dist $version failed (see above): the installed mmcv and the stamp are unchanged" >&2
    return 1
  fi
  rm -rf "$src"
  ls "$WHEEL_DIR/$pkg-$version"-*.whl >/dev/null
}

# Both stacks own the same import names: drop the other stack's distributions before installing.
OTHER_DISTS=$(sed -n -E 's/^([A-Za-z0-9_.-]+)==.*/\1/p' "$ROOT/$OTHER_REQ")
# shellcheck disable=SC2086  (one name per word)
INSTALLED_OTHER=$("$VPY" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
  | sed -n -E 's/^([A-Za-z0-9_.-]+)==.*/\1/p' | tr '_' '-' | grep -ixF -f <(printf '%s\n' $OTHER_DISTS) || true)
if [ -n "$INSTALLED_OTHER" ]; then
  log "switching to the $STACK stack: uninstalling" $INSTALLED_OTHER
  # shellcheck disable=SC2086
  "$VPY" -m pip uninstall --disable-pip-version-check -y -q $INSTALLED_OTHER
fi

# The mmcv build the targets need: CPU ops only without GPU targets (any installed build serves),
# else CUDA ops for exactly the targets, which a CPU-only or other-arch build does not serve. The
# wheel cache key names the build: torch-<tag>-cuda0 (CPU) or torch-<tag>-cuda-sm70_80 (archs);
# $MMCV_RECORD keeps the key of the installed build.
MMCV_OK=$("$VPY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1 && echo 1 || true)
MMCV_PLAN=$("$PY" "$GPU_ENV" plan-mmcv --torch-tag "$TORCH_TAG" --torch-cuda "$TORCH_CUDA" \
  --targets "$CFM_TARGETS" --record "$MMCV_RECORD" ${MMCV_OK:+--installed-ok}) || exit 2
eval "$MMCV_PLAN"
log "$MMCV_LINE"
if [ "$MMCV_REBUILD" = 1 ]; then
  WHEEL_DIR="$CACHE/wheels/$MMCV_KEY"
  mkdir -p "$WHEEL_DIR"
  (
    if [ -z "$MMCV_ARCH_LIST" ]; then
      export CUDA_VISIBLE_DEVICES=  # a CPU build even where torch sees a GPU
    elif ! ls "$WHEEL_DIR/${MMCV_DIST//-/_}-$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
      if [ "$TOOLKIT_SOURCE" = pypi ]; then
        log "installing NVIDIA's CUDA toolkit packages: $TOOLKIT_REQ"
        # shellcheck disable=SC2086  (one requirement a word)
        if ! pip_install -q $TOOLKIT_REQ; then
          echo "[setup] NVIDIA's toolkit packages for torch's CUDA $TORCH_CUDA ($TOOLKIT_REQ) are not on PyPI: install a CUDA $TORCH_CUDA toolkit, put its nvcc on PATH (or set CUDA_HOME) and rerun with CFM_TOOLKIT=system" >&2
          exit 2
        fi
        # shellcheck disable=SC2086
        TOOLKIT_HOME=$("$VPY" "$GPU_ENV" cuda-home "$VENV/cuda" $TOOLKIT_REQ) || exit 2
      fi
      export CUDA_HOME=$TOOLKIT_HOME PATH="$TOOLKIT_HOME/bin:$PATH" FORCE_CUDA=1 \
        TORCH_CUDA_ARCH_LIST=$MMCV_ARCH_LIST
      log "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    fi
    build_mmcv "$MMCV_DIST" "$MMCV_VERSION"
  )
  # Installed only once the wheel is built: a failed build leaves the environment as it was.
  log "installing $MMCV_DIST from $WHEEL_DIR"
  pip_install -q --no-deps --force-reinstall "$WHEEL_DIR/${MMCV_DIST//-/_}-$MMCV_VERSION"-*.whl
  echo "$MMCV_KEY" > "$MMCV_RECORD"
fi

# 4. The rest of the stack, the test tools, and the package itself (editable, with its native op).
log "installing the $STACK OpenMMLab stack and test requirements"
pip_install -q -r "$ROOT/requirements/runtime.txt" -r "$ROOT/$MM_REQ" \
  -r "$ROOT/requirements/tests.txt" "$NUMPY_REQ"
log "installing crossformer_mm (editable, builds the native op)"
pip_install -q --no-build-isolation --no-deps -e "$ROOT"

if ! check_env; then
  echo "[setup] the environment was installed but importing the stack failed:" >&2
  "$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmpretrain.registry, crossformer_mm" >&2 || true
  exit 1
fi
echo "$STAMP" > "$STAMP_FILE"
log "done: $VENV ($STACK stack)"
# 5. The verify step: what this machine's GPUs (or its CPU) get from the environment; it names the
#    fix and exits non-zero when something a run here needs is missing.
"$VPY" "$ROOT/tools/misc/check_env.py"
