"""Build and install crossformer_mm.

The native CPU kernels under ``crossformer_mm/ops/csrc`` are compiled into ``crossformer_mm._ext``
with torch's C++ extension tooling. Install with ``--no-build-isolation`` so the build sees the
installed torch (``tools/setup_env.sh`` does this).
"""
import glob
import os
import re
from typing import List

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(ROOT, 'crossformer_mm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


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
    flags = ['-O3', '-fopenmp', '-DAT_PARALLEL_OPENMP=1']
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
    version=read_version(),
    description='CrossFormer, Swin and ViT backbones, a multi-scale deformable attention op and '
    'DETR-family detectors for OpenMMLab 2.x',
    packages=find_packages(include=['crossformer_mm', 'crossformer_mm.*']),
    python_requires='>=3.9',
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'mm': read_requirements('mminstall.txt'),
        'tests': read_requirements('tests.txt'),
        'optional': read_requirements('optional.txt'),
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
