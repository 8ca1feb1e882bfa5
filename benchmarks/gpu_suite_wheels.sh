#!/usr/bin/env bash
# Prepares, on a machine with network, what benchmarks/gpu_suite.sh needs for its model-level
# part on a GPU machine without network: the OpenMMLab stack (mmengine, mmdet, mmsegmentation,
# mmpretrain) and their dependencies as wheels for that machine's Python (default 3.12, x86_64
# Linux), plus mmcv's sdist (its ops are built there) and the build tools, into .whl/ (git-ignored;
# never commit it). gpu_suite.sh installs only the wheels whose distribution the GPU machine lacks.
#
#   bash benchmarks/gpu_suite_wheels.sh                     # into <repo>/.whl
#   GPU_PY=3.12 GPU_SUITE_EXCLUDE="numpy pillow" bash benchmarks/gpu_suite_wheels.sh DEST
#
# Knobs: PYTHON (the pip that downloads; default <repo>/.venv/bin/python, else python3: it needs
# torch and setuptools<82 to read mmcv's sdist), GPU_PY (the GPU machine's Python version),
# GPU_SUITE_EXCLUDE (distributions the GPU machine already has, left out to keep the folder small),
# GPU_SUITE_PART_MB (the largest part, default 56 MiB: the files are split into DEST/part-N/ so
# that each part fits one transfer; gpu_suite.sh installs what the parts carried so far hold).
# Versions: the OpenMMLab ones pinned in requirements/mminstall.txt, the others those of PYTHON's
# environment (the set the tests run with), else the newest.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
DEST=${1:-$ROOT/.whl}
GPU_PY=${GPU_PY:-3.12}

# What `import mmdet / mmseg / mmpretrain.registry / crossformer_mm` and a training step need
# (runtime dependencies of the five packages), and what building mmcv's ops needs.
PACKAGES=(
  mmengine mmdet mmsegmentation mmpretrain
  addict pyyaml rich markdown-it-py mdurl pygments termcolor yapf platformdirs
  opencv-python-headless matplotlib contourpy cycler fonttools kiwisolver pyparsing
  python-dateutil six pillow packaging numpy
  pycocotools scipy shapely terminaltables tqdm
  prettytable wcwidth ftfy regex
  einops importlib-metadata zipp mat4py model-index ordered-set click markdown
  setuptools wheel ninja
)
mapfile -t REQUIREMENTS < <("$PYTHON" - "$ROOT/requirements/mminstall.txt" \
    "${GPU_SUITE_EXCLUDE:-}" "${PACKAGES[@]}" <<'PY'
import re, sys
from importlib import metadata
pins = dict(re.findall(r'^([A-Za-z0-9_.-]+)==(\S+)', open(sys.argv[1]).read(), re.M))
excluded = set(sys.argv[2].split())
# The headless OpenCV stands in for opencv-python (mmcv imports cv2 only).
aliases = {'opencv-python-headless': 'opencv-python'}
for name in sys.argv[3:]:
    if name in excluded:
        continue
    version = pins.get(name)
    if version is None:
        for dist in (name, aliases.get(name)):
            try:
                version = metadata.version(dist) if dist else None
            except metadata.PackageNotFoundError:
                continue
            if version:
                break
    if name == 'setuptools':  # mmcv's setup.py and mmengine need pkg_resources (gone in 82)
        print('setuptools>=77,<82')
    elif version:
        print(f'{name}=={version}')
    else:
        print(name)
PY
)
MMCV=$(sed -n -E 's/^(mmcv==[^ ;#]+).*/\1/p' "$ROOT/requirements/mminstall.txt")

mkdir -p "$DEST"
pip_download() {
  "$PYTHON" -m pip download --disable-pip-version-check --no-deps -d "$DEST" "$@" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}
echo "[wheels] ${#REQUIREMENTS[@]} wheels for CPython $GPU_PY (x86_64 Linux) into $DEST"
pip_download --only-binary=:all: --python-version "$GPU_PY" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 "${REQUIREMENTS[@]}"
echo "[wheels] $MMCV as its sdist (its ops are compiled on the GPU machine)"
pip_download --no-binary :all: --no-build-isolation "$MMCV"
# Split into parts of at most GPU_SUITE_PART_MB MiB (first fit, largest first), so that each
# part fits what one transfer to the GPU machine may carry; gpu_suite.sh reads them all.
mapfile -t PARTS < <("$PYTHON" - "$DEST" "${GPU_SUITE_PART_MB:-56}" <<'PY'
import glob, os, sys
dest, budget = sys.argv[1], float(sys.argv[2]) * 2**20
files = glob.glob(os.path.join(dest, '*.whl')) + glob.glob(os.path.join(dest, '*.tar.gz'))
parts = []  # [bytes, [files]]
for f in sorted(files, key=os.path.getsize, reverse=True):
    size = os.path.getsize(f)
    part = next((p for p in parts if p[0] + size <= budget), None)
    if part is None:
        part = [0, []]
        parts.append(part)
    part[0] += size
    part[1].append(f)
for i, (size, names) in enumerate(parts, 1):
    folder = os.path.join(dest, f'part-{i}')
    os.makedirs(folder, exist_ok=True)
    for f in names:
        os.replace(f, os.path.join(folder, os.path.basename(f)))
    print(f'{folder} {size / 2**20:.0f} MiB, {len(names)} files')
PY
)
echo "[wheels] done: $(du -sh "$DEST" | cut -f1) in $DEST, in ${#PARTS[@]} parts:"
printf '    %s\n' "${PARTS[@]}"
echo "On the GPU machine, from the repository root, one part per transfer: with each part but the"
echo "last, GPU_SUITE_INSTALL_ONLY=1 bash benchmarks/gpu_suite.sh; with the last, bash benchmarks/gpu_suite.sh"
