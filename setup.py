"""Build and install crossformer_mm.

The native CPU kernels under ``crossformer_mm/ops/csrc`` are compiled into ``crossformer_mm._ext``
with torch's C++ extension tooling. Install with ``--no-build-isolation`` so the build sees the
installed torch (``tools/setup_env.sh`` does this).
"""
import glob
import os
import runpy
from typing import Dict, List

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


#: crossformer_mm/version.py: the package version and the tested floors of its dependencies.
ABOUT = runpy.run_path(os.path.join(ROOT, 'crossformer_mm', 'version.py'))


def floors(*names: str) -> List[str]:
    """``dist>=floor`` for each import name, from ``MIN_VERSIONS``."""
    return [f"{ABOUT['DISTRIBUTIONS'].get(n, n)}>={ABOUT['MIN_VERSIONS'][n]}" for n in names]


#: The mmcv range each toolbox asserts when imported (mmdet 3.3, mmseg 1.2.2: < 2.2.0; mmpretrain
#: 1.2.0: < 2.4.0) without declaring it.
MMCV_CEILING = {'mmdet': ',<2.2.0', 'mmseg': ',<2.2.0', 'mmpretrain': ',<2.4.0'}

#: One extra per toolbox (``pip install crossformer_mm[mmdet]``): the oldest tested versions of the
#: upstream stack, never a pin. Not needed where the toolbox is installed already.
TOOLBOX_EXTRAS: Dict[str, List[str]] = {
    toolbox: floors('mmengine') + [floors('mmcv')[0] + ceiling] + floors(toolbox)
    for toolbox, ceiling in MMCV_CEILING.items()}


def read_requirements(name: str) -> List[str]:
    reqs = []
    with open(os.path.join(ROOT, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                reqs.append(line)
    return reqs


def native_extensions():
    """The package's C++ ops; empty when the sources or torch are absent (pure-Python install)."""
    sources = sorted(glob.glob(os.path.join('crossformer_mm', 'ops', 'csrc', '**', '*.cpp'),
                             recursive=True))
    if not sources:
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print('torch is not importable: building crossformer_mm without its native ops '
              '(install with --no-build-isolation to build them)')
        return [], {}
    # -fno-trapping-math: floating-point operations are taken not to trap (nothing here enables
    # FP exceptions), which lets the compiler turn the branch-free selects of the MSDA kernel's
    # point loop into vector blends; it changes no result.
    flags = ['-O3', '-fno-trapping-math', '-fopenmp', '-DAT_PARALLEL_OPENMP=1']
    ext = CppExtension(
        'crossformer_mm._ext',
        sources,
        include_dirs=[os.path.join(ROOT, 'crossformer_mm', 'ops', 'csrc')],
        extra_compile_args={'cxx': flags},
        extra_link_args=['-fopenmp'])
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extensions()

setup(
    name='crossformer_mm',
    version=ABOUT['__version__'],
    description='CrossFormer, Swin and ViT backbones, a multi-scale deformable attention op and '
    'DETR-family detectors for OpenMMLab 2.x',
    packages=find_packages(include=['crossformer_mm', 'crossformer_mm.*']),
    python_requires='>=3.9',
    # The numpy floor only: no OpenMMLab package, no numpy major version is forced. torch's floor
    # is an extra and checked at import: as a requirement, pip re-resolves the installed torch's
    # own dependencies and replaces that torch (a CUDA build) when one of them was changed.
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'torch': floors('torch'),
        **TOOLBOX_EXTRAS,
        # The three toolboxes: mmcv in the range all of them accept.
        'mm': floors('mmengine') + [floors('mmcv')[0] + MMCV_CEILING['mmdet']] + floors(
            'mmdet', 'mmseg', 'mmpretrain'),
        'tests': read_requirements('tests.txt'),
        'optional': read_requirements('optional.txt'),
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
