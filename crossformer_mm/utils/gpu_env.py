"""What a GPU machine needs from the environment: its GPUs, the torch build that serves them, and
the CUDA toolkit that builds mmcv's CUDA ops for them.

The decisions of ``tools/setup_env.sh`` live here, in one place, so that the setup script, the
verify tool and the tests share them. The module uses the standard library only and imports
neither torch nor the package: the setup script runs it by path before either is installed::

    python3 crossformer_mm/utils/gpu_env.py plan-torch [--installed VERSION CUDA]
    python3 crossformer_mm/utils/gpu_env.py plan-mmcv --torch-tag TAG --torch-cuda CUDA [...]

Each ``plan-*`` command prints shell assignments for the script to ``eval``; a user mistake (an
unknown arch, a driver too old for every build, a toolkit that cannot be had) exits with status 2
and one line on stderr that says what to do.

Facts used (NVIDIA and PyTorch documentation):

- PyTorch 2.14's CUDA 12.6 builds carry kernels for compute capability 5.0, 6.0, 7.0, 7.5, 8.0,
  8.6, 9.0; its CUDA 13.0 builds (the PyPI default) 7.5, 8.0, 8.6, 9.0, 10.0, 12.0. A cubin runs
  on GPUs of the same major version and an equal or higher minor version.
- CUDA 13's nvcc cannot compile for compute capability below 7.5.
- Minimum driver for a CUDA major family under minor-version compatibility (NVIDIA, "CUDA
  Compatibility", Minor Version Compatibility table; the toolkit release notes): CUDA 12.x needs
  >= 525.60.13, CUDA 13.x needs >= 580.
- NVIDIA's toolkit packages on PyPI (``nvidia-cuda-nvcc`` ...) carry ``nvcc`` for CUDA 13.x only;
  the CUDA 12 wheels (``nvidia-cuda-nvcc-cu12``) hold ``ptxas`` and libnvvm but no ``nvcc``.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

Capability = tuple  # (major, minor)

#: The knob naming target archs on a node without GPUs, e.g. ``CFM_CUDA_ARCHS="7.0;8.0"``;
#: ``cpu`` means no GPU target even where GPUs are visible.
ARCHS_KNOB = 'CFM_CUDA_ARCHS'
TORCH_VERSION = '2.14.1'
TORCHVISION_VERSION = '0.29.1'
PYTORCH_INDEX = 'https://download.pytorch.org/whl/'
#: Where the toolkit that builds mmcv's CUDA ops comes from: ``auto`` (a matching system nvcc, else
#: PyPI), ``system`` or ``pypi``.
TOOLKIT_KNOB = 'CFM_TOOLKIT'
#: The file in the environment that records which mmcv build is installed (its cache key).
MMCV_RECORD = '.crossformer_mm-mmcv'
#: The cache-key suffix of an mmcv built without CUDA ops (kept from earlier releases).
CPU_KEY = 'cuda0'

#: Compute capabilities of NVIDIA GPUs that CUDA 11–13 name.
KNOWN_CAPABILITIES = frozenset({
    (3, 5), (3, 7), (5, 0), (5, 2), (5, 3), (6, 0), (6, 1), (6, 2), (7, 0), (7, 2), (7, 5),
    (8, 0), (8, 6), (8, 7), (8, 8), (8, 9), (9, 0), (10, 0), (10, 3), (11, 0), (12, 0), (12, 1)})


class GpuEnvError(Exception):
    """A problem the user can fix; the message is one line that says how."""


@dataclass(frozen=True)
class GPU:
    """One NVIDIA GPU as ``nvidia-smi`` reports it."""
    index: int
    name: str
    capability: Optional[Capability]  # None when the driver is too old to report it
    driver: str
    memory_mib: int

    @property
    def arch(self) -> str:
        """``sm_80`` style name of the compute capability ('' when unknown)."""
        return '' if self.capability is None else 'sm_%d%d' % self.capability


@dataclass(frozen=True)
class TorchBuild:
    """One CUDA build of torch that the setup can install."""
    cuda: str
    index_url: Optional[str]  # None: the default PyPI wheel
    capabilities: tuple

    @property
    def requirements(self) -> str:
        if self.index_url is None:
            return f'torch=={TORCH_VERSION} torchvision=={TORCHVISION_VERSION}'
        local = 'cu' + self.cuda.replace('.', '')
        return f'torch=={TORCH_VERSION}+{local} torchvision=={TORCHVISION_VERSION}+{local}'


#: The torch builds the setup chooses from, in order of preference.
TORCH_BUILDS = (
    TorchBuild('13.0', None, ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))),
    TorchBuild('12.6', PYTORCH_INDEX + 'cu126', ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6),
                                                  (9, 0))),
)


@dataclass(frozen=True)
class TorchChoice:
    """What ``plan-torch`` decided: what to pip-install (nothing when kept) and why."""
    requirements: str
    index_url: Optional[str]
    cuda: Optional[str]
    reason: str


@dataclass(frozen=True)
class Toolkit:
    """The CUDA toolkit that builds mmcv's CUDA ops."""
    source: str  # 'system' or 'pypi'
    version: str
    cuda_home: Optional[str]  # the system toolkit's folder; None for 'pypi' (assembled later)
    requirements: tuple  # the PyPI packages to install ('pypi' only)


@dataclass(frozen=True)
class MmcvPlan:
    """What ``plan-mmcv`` decided."""
    key: str  # wheel-cache folder name, e.g. torch-2.14.1_cu130-cuda-sm80_90
    arch_list: str  # TORCH_CUDA_ARCH_LIST; '' for a CPU build
    toolkit: Optional[Toolkit]
    rebuild: bool
    reason: str


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_version(text: str) -> tuple:
    """``'535.104.05'`` -> ``(535, 104, 5)``; ``'12.6'`` -> ``(12, 6)``."""
    parts = re.findall(r'\d+', text.strip())
    if not parts:
        raise ValueError(f'not a version: {text!r}')
    return tuple(int(p) for p in parts)


def format_capability(cap: Capability) -> str:
    return '%d.%d' % cap


def parse_capability(text: str, known: bool = True) -> Capability:
    """``'8.0'``, ``'sm_80'``, ``'80'`` or ``'8.0+PTX'`` -> ``(8, 0)``; raises GpuEnvError, also
    for a capability no NVIDIA GPU has when ``known``."""
    item = text.strip().lower()
    if item.endswith('+ptx'):
        item = item[:-4]
    m = re.fullmatch(r'(\d+)\.(\d)', item) or re.fullmatch(r'(?:sm_|compute_)?(\d+)(\d)', item)
    if not m:
        raise GpuEnvError(f'{ARCHS_KNOB}: {text!r} is not a compute capability; give the GPUs\' '
                          'compute capabilities, e.g. CFM_CUDA_ARCHS="7.0;8.0;9.0"')
    cap = (int(m.group(1)), int(m.group(2)))
    if known and cap not in KNOWN_CAPABILITIES:
        raise GpuEnvError(f'{ARCHS_KNOB}: compute capability {format_capability(cap)} is no '
                          f'NVIDIA GPU this setup knows; set {ARCHS_KNOB} to the GPUs\' compute '
                          'capabilities (nvidia-smi --query-gpu=name,compute_cap --format=csv on '
                          'a GPU node)')
    return cap


def parse_archs(text: Optional[str]) -> Optional[list]:
    """The GPU-target knob: ``"7.0;8.0"`` (``;``, ``,`` or spaces between) -> sorted unique
    capabilities; ``None``/empty -> ``None`` (not given); ``"cpu"`` -> ``[]`` (no GPU target)."""
    if text is None or not text.strip():
        return None
    if text.strip().lower() in ('cpu', 'none'):
        return []
    return sorted({parse_capability(item) for item in re.split(r'[;,\s]+', text.strip()) if item})


def arch_key(capabilities: Iterable[Capability]) -> str:
    """The wheel-cache suffix of an mmcv built for ``capabilities``: ``cuda-sm70_80``, or
    ``cuda0`` without any (a CPU build)."""
    caps = sorted(set(capabilities))
    if not caps:
        return CPU_KEY
    return 'cuda-' + '_'.join(('sm%d%d' % c if c == caps[0] else '%d%d' % c) for c in caps)


def parse_key(key: str) -> tuple:
    """``'torch-2.14.1_cu130-cuda-sm80_90'`` -> ``('2.14.1_cu130', [(8, 0), (9, 0)])``."""
    m = re.fullmatch(r'torch-(.+)-(cuda0|cuda1|cuda-sm(\d+(?:_\d+)*))', key.strip())
    if not m:
        raise ValueError(f'not an mmcv build key: {key!r}')
    caps = [] if m.group(3) is None else [(int(s[:-1]), int(s[-1])) for s in m.group(3).split('_')]
    return m.group(1), caps


def installed_mmcv_build(prefix: Optional[str] = None) -> Optional[tuple]:
    """``(torch tag, capabilities)`` of the mmcv the setup installed into the environment at
    ``prefix`` (default: the running interpreter's), from its record; None when not recorded."""
    record = Path(prefix or sys.prefix) / MMCV_RECORD
    try:
        return parse_key(record.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Reading the machine


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def query_gpus(nvidia_smi: Optional[str] = None) -> list:
    """The NVIDIA GPUs of this machine (``[]`` without ``nvidia-smi`` or without GPUs).

    Raises GpuEnvError when ``nvidia-smi`` is there but fails (e.g. the driver is not loaded).
    """
    exe = nvidia_smi or shutil.which('nvidia-smi')
    if exe is None or not os.access(exe, os.X_OK):
        return []
    fields = 'index,name,compute_cap,driver_version,memory.total'
    out = _run([exe, f'--query-gpu={fields}', '--format=csv,noheader,nounits'])
    with_cap = out.returncode == 0
    if not with_cap:
        text = (out.stdout + out.stderr).strip()
        if 'no devices were found' in text.lower():
            return []
        if 'compute_cap' not in text:  # drivers before 510 cannot report it: ask without it
            raise GpuEnvError(f'nvidia-smi failed ({text.splitlines()[0] if text else out.returncode}):'
                              ' fix the NVIDIA driver, or set CFM_CUDA_ARCHS on a node without GPUs')
        out = _run([exe, '--query-gpu=index,name,driver_version,memory.total',
                    '--format=csv,noheader,nounits'])
        if out.returncode != 0:
            raise GpuEnvError(f'nvidia-smi failed: {(out.stdout + out.stderr).strip()[:200]}')
    gpus = []
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.split(',')]
        if not line.strip():
            continue
        if with_cap:
            index, name, cap, driver, memory = cells
            capability = parse_capability(cap, known=False) if cap not in ('', '[N/A]') else None
        else:
            index, name, driver, memory = cells
            capability = None
        gpus.append(GPU(int(index), name, capability, driver, int(parse_version(memory)[0])))
    return gpus


def nvcc_version(nvcc: str) -> Optional[str]:
    """``'12.4'`` from ``nvcc --version`` (None when it does not run)."""
    try:
        out = _run([nvcc, '--version'])
    except OSError:
        return None
    m = re.search(r'release (\d+\.\d+)', out.stdout)
    return m.group(1) if out.returncode == 0 and m else None


def find_system_nvcc(env: Optional[dict] = None,
                     fallbacks: Sequence[str] = ('/usr/local/cuda',)) -> Optional[tuple]:
    """``(cuda_home, version)`` of the system toolkit, looked for where torch's extension builder
    looks: CUDA_HOME or CUDA_PATH, else the ``nvcc`` on PATH, else ``fallbacks``. A folder counts
    only with ``bin/nvcc`` and the runtime headers (``include/cuda_runtime.h``), which skips a
    ``/usr/local/bin/nvcc`` wrapper whose folder is not a toolkit. None when there is none."""
    env = os.environ if env is None else env
    homes = [env.get('CUDA_HOME'), env.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc', path=env.get('PATH', os.defpath))
    if nvcc:
        homes += [os.path.dirname(os.path.dirname(nvcc)),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    homes += list(fallbacks)
    for home in homes:
        if not home or not os.access(os.path.join(home, 'bin', 'nvcc'), os.X_OK):
            continue
        if not os.path.isfile(os.path.join(home, 'include', 'cuda_runtime.h')):
            continue
        version = nvcc_version(os.path.join(home, 'bin', 'nvcc'))
        if version:
            return home, version
    return None


def min_driver_for_cuda(cuda_version: str) -> tuple:
    """The oldest NVIDIA driver that runs a build made with CUDA ``cuda_version`` (minor-version
    compatibility: any driver of the family's minimum runs every minor release)."""
    major = parse_version(cuda_version)[0]
    table = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580,)}
    if major not in table:
        raise GpuEnvError(f'CUDA {cuda_version}: no known minimum driver; use a CUDA 12 or 13 '
                          'build of torch')
    return table[major]


def served_by(capability: Capability, built_for: Iterable[Capability]) -> bool:
    """Whether code built for ``built_for`` runs on ``capability`` (a cubin runs on the same
    major version with an equal or higher minor)."""
    return any(c[0] == capability[0] and c[1] <= capability[1] for c in built_for)


def torch_capabilities(cuda_version: str) -> Optional[tuple]:
    """The compute capabilities a torch CUDA build carries kernels for (None: not known)."""
    for build in TORCH_BUILDS:
        if build.cuda == cuda_version:
            return build.capabilities
    if parse_version(cuda_version)[0] == 13:
        return TORCH_BUILDS[0].capabilities
    return None


def nvcc_supports(toolkit: str, capability: Capability) -> bool:
    """Whether nvcc ``toolkit`` (``'12.6'``) compiles for ``capability``."""
    major, minor = parse_version(toolkit)[:2]
    lowest = {11: (3, 5), 12: (5, 0), 13: (7, 5)}.get(major, (7, 5))
    highest = (9, 0) if (major, minor) < (12, 8) else (12, 1)
    return lowest <= capability <= highest


# ---------------------------------------------------------------------------------------------
# Decisions


def gpu_targets(gpus: Sequence[GPU], knob: Optional[str]) -> list:
    """The compute capabilities to serve: the knob's when given, else the visible GPUs'."""
    archs = parse_archs(knob)
    if archs is not None:
        return archs
    for gpu in gpus:
        if gpu.capability is not None and gpu.capability not in KNOWN_CAPABILITIES:
            raise GpuEnvError(f'GPU {gpu.index} ({gpu.name}) has compute capability '
                              f'{format_capability(gpu.capability)}, which this setup does not '
                              f'know: set {ARCHS_KNOB} to the archs to build for, or install a '
                              'torch that supports it and set CFM_TORCH')
    # A driver too old to report compute capabilities leaves none here; choose_torch says so.
    return sorted({g.capability for g in gpus if g.capability is not None})


def _names(gpus: Sequence[GPU], cap: Capability) -> str:
    names = sorted({g.name for g in gpus if g.capability == cap})
    return f' ({", ".join(names)})' if names else ''


def _driver_text(driver: Optional[str]) -> str:
    return f'driver {driver}' if driver else 'no driver checked (no GPU visible)'


def choose_torch(targets: Sequence[Capability], gpus: Sequence[GPU] = (),
                 installed: Optional[tuple] = None,
                 requested: Optional[str] = None) -> TorchChoice:
    """The torch build for ``targets`` with the driver of ``gpus``.

    Args:
        targets: compute capabilities to serve (empty: no GPU target, the CPU path).
        gpus: the visible GPUs (their driver is checked).
        installed: ``(version, cuda or None)`` of a torch the environment already has; it is kept
            when it serves the targets, refused with the fix when it does not.
        requested: the ``CFM_TORCH`` knob, installed as given when set.
    """
    driver = gpus[0].driver if gpus else None
    if installed is not None:
        version, cuda = installed
        if not targets:
            return TorchChoice('', None, cuda, f'torch {version} already installed: kept')
        if not cuda:
            raise GpuEnvError(f'torch {version} in the environment is a CPU-only build and the '
                              f'targets are GPUs ({_target_text(targets)}): remove the '
                              'environment (CFM_VENV) and rerun setup to install a CUDA build')
        caps = torch_capabilities(cuda)
        missing = [c for c in targets if caps is not None and not served_by(c, caps)]
        if missing:
            raise GpuEnvError(f'torch {version} (CUDA {cuda}) has no kernels for compute '
                              f'capability {format_capability(missing[0])}'
                              f'{_names(gpus, missing[0])}: remove the environment (CFM_VENV) '
                              'and rerun setup, which installs a build that has')
        if driver and parse_version(driver) < min_driver_for_cuda(cuda):
            raise GpuEnvError(_old_driver(driver, cuda))
        return TorchChoice('', None, cuda, f'torch {version} (CUDA {cuda}) already installed: '
                                           f'kept, it serves {_target_text(targets)}')
    if gpus and all(g.capability is None for g in gpus) and not targets:
        oldest = min(min_driver_for_cuda(b.cuda) for b in TORCH_BUILDS)
        raise GpuEnvError(f'NVIDIA driver {driver} is too old for every torch {TORCH_VERSION} '
                          f'build (the oldest needs >= {".".join(map(str, oldest))}): update '
                          'the driver')
    if requested:
        return TorchChoice(requested, None, None, f'torch build: {requested} (CFM_TORCH)')
    if not targets:
        return TorchChoice(f'torch=={TORCH_VERSION} torchvision=={TORCHVISION_VERSION}', None,
                           None, f'torch build: PyPI default (CUDA 13.0 build, runs on the CPU): '
                                 'no NVIDIA GPU and no CFM_CUDA_ARCHS')
    refused = []
    for build in TORCH_BUILDS:
        missing = [c for c in targets if not served_by(c, build.capabilities)]
        if missing:
            refused.append(f'CUDA {build.cuda} has no {format_capability(missing[0])}')
            continue
        if driver and parse_version(driver) < min_driver_for_cuda(build.cuda):
            refused.append(f'CUDA {build.cuda} needs driver >= '
                           f'{".".join(map(str, min_driver_for_cuda(build.cuda)))}')
            continue
        where = ('the PyPI default' if build.index_url is None
                 else f'PyTorch\'s {build.index_url} index')
        why = f'serves {_target_text(targets)} with {_driver_text(driver)}'
        if refused:
            why += ' (' + '; '.join(refused) + ')'
        return TorchChoice(build.requirements, build.index_url, build.cuda,
                           f'torch build: CUDA {build.cuda} from {where}: {why}')
    for cap in targets:
        if not any(served_by(cap, b.capabilities) for b in TORCH_BUILDS):
            raise GpuEnvError(f'compute capability {format_capability(cap)}{_names(gpus, cap)} '
                              f'is served by no torch {TORCH_VERSION} build (CUDA 12.6: 5.0-9.0, '
                              'CUDA 13.0: 7.5-12.0): set CFM_TORCH to a torch that supports it, '
                              'or CFM_CUDA_ARCHS to the GPUs you will use')
    serving = [b for b in TORCH_BUILDS if all(served_by(c, b.capabilities) for c in targets)]
    if serving:  # each was refused for the driver: name the most lenient
        raise GpuEnvError(_old_driver(driver, min(serving, key=lambda b: parse_version(b.cuda)).cuda))
    raise GpuEnvError(f'no single torch {TORCH_VERSION} build serves compute capabilities '
                      f'{_target_text(targets)} ({"; ".join(refused)}): set CFM_CUDA_ARCHS to '
                      'the GPUs of the nodes you will train on')


def _old_driver(driver: str, cuda: str) -> str:
    need = '.'.join(map(str, min_driver_for_cuda(cuda)))
    return (f'NVIDIA driver {driver} is too old for torch\'s CUDA {cuda} build (needs >= {need}):'
            ' update the driver')


def _target_text(targets: Sequence[Capability]) -> str:
    return ', '.join(format_capability(c) for c in targets)


#: NVIDIA's toolkit packages on PyPI, per CUDA major version: the CUDA 12 wheels have no nvcc.
PYPI_TOOLKIT = {13: ('nvidia-cuda-nvcc', 'nvidia-cuda-cccl', 'nvidia-cuda-crt', 'nvidia-nvvm',
                     'nvidia-cuda-runtime')}


def choose_toolkit(torch_cuda: str, targets: Sequence[Capability],
                   system: Optional[tuple], source: str = 'auto') -> Toolkit:
    """The toolkit that builds mmcv for torch's CUDA ``torch_cuda``: the system one when its
    version matches (major.minor; same major where PyPI has no toolkit for that major), else
    NVIDIA's packages from PyPI. ``source`` (the CFM_TOOLKIT knob) forces one of the two."""
    if source not in ('auto', 'system', 'pypi'):
        raise GpuEnvError(f"{TOOLKIT_KNOB} must be 'auto', 'system' or 'pypi', got {source!r}")
    major_minor = parse_version(torch_cuda)[:2]
    pypi = PYPI_TOOLKIT.get(major_minor[0])
    if source == 'system' and (system is None or parse_version(system[1])[0] != major_minor[0]):
        found = f'the system nvcc is {system[1]}' if system else 'no system nvcc was found'
        raise GpuEnvError(f'{TOOLKIT_KNOB}=system but {found} and torch\'s CUDA is {torch_cuda}: '
                          f'put a CUDA {torch_cuda} nvcc on PATH or set CUDA_HOME to its toolkit')
    if system is not None and source != 'pypi':
        home, version = system
        ours = parse_version(version)[:2]
        if ours == major_minor or (pypi is None and ours[0] == major_minor[0]):
            toolkit = Toolkit('system', version, home, ())
            _check_nvcc_archs(toolkit, targets)
            return toolkit
    if pypi is None:
        found = f'; the system nvcc is {system[1]}' if system else ''
        raise GpuEnvError(f'torch\'s CUDA {torch_cuda} needs a CUDA {major_minor[0]}.x nvcc and '
                          f'PyPI has none for CUDA {major_minor[0]}{found}: install or load a '
                          f'CUDA {torch_cuda} toolkit (e.g. `module load cuda/{torch_cuda}`) and '
                          'put its nvcc on PATH or set CUDA_HOME, then rerun')
    series = '%d.%d' % major_minor
    toolkit = Toolkit('pypi', series, None, tuple(f'{name}=={series}.*' for name in pypi))
    _check_nvcc_archs(toolkit, targets)
    return toolkit


def _check_nvcc_archs(toolkit: Toolkit, targets: Sequence[Capability]) -> None:
    for cap in targets:
        if not nvcc_supports(toolkit.version, cap):
            raise GpuEnvError(f'nvcc {toolkit.version} cannot compile for compute capability '
                              f'{format_capability(cap)}: set CFM_CUDA_ARCHS to the GPUs you '
                              'will use, with the torch build that serves them')


def plan_mmcv(torch_tag: str, torch_cuda: Optional[str], targets: Sequence[Capability],
              installed_ok: bool, record: Optional[str],
              system: Optional[tuple] = None, source: str = 'auto') -> MmcvPlan:
    """How mmcv must be built for ``targets`` and whether the installed one serves.

    Args:
        torch_tag: ``torch.__version__`` with ``+`` as ``_`` (the cache key's torch part).
        torch_cuda: ``torch.version.cuda`` (None for a CPU-only torch).
        targets: compute capabilities to serve (empty: the CPU build).
        installed_ok: whether mmcv of the pinned version imports with its ops.
        record: the installed build's key (the MMCV_RECORD file), None if not recorded.
        system: ``(cuda_home, version)`` of a system toolkit, see ``find_system_nvcc``.
        source: the CFM_TOOLKIT knob, see ``choose_toolkit``.
    """
    key = f'torch-{torch_tag}-{arch_key(targets)}'
    if not targets:
        reason = ('mmcv: the installed build is kept' if installed_ok
                  else 'mmcv: CPU ops (no GPU target)')
        return MmcvPlan(key, '', None, not installed_ok, reason)
    if not torch_cuda:
        raise GpuEnvError(f'torch {torch_tag} is a CPU-only build and the targets are GPUs: '
                          'remove the environment (CFM_VENV) and rerun setup')
    covered = False
    if installed_ok and record:
        try:
            tag, caps = parse_key(record)
            covered = tag == torch_tag and all(c in caps for c in targets)
        except ValueError:
            covered = False
    if covered:
        return MmcvPlan(key, ';'.join(map(format_capability, targets)), None, False,
                        f'mmcv: the installed build ({record}) has CUDA ops for '
                        f'{_target_text(targets)}: kept')
    toolkit = choose_toolkit(torch_cuda, targets, system, source)
    was = record if installed_ok and record else ('a CPU-only or unrecorded build' if installed_ok
                                                  else 'none')
    if toolkit.source == 'system':
        how = f'the system nvcc {toolkit.version} in {toolkit.cuda_home}'
    else:
        sys_note = (f', {TOOLKIT_KNOB}=pypi' if source == 'pypi' else
                    f', the system nvcc {system[1]} does not match' if system else '')
        how = f'NVIDIA\'s CUDA {toolkit.version} toolkit from PyPI (torch\'s CUDA {torch_cuda}' \
              f'{sys_note})'
    return MmcvPlan(key, ';'.join(map(format_capability, targets)), toolkit, True,
                    f'mmcv: building CUDA ops for {_target_text(targets)} with {how}; '
                    f'installed: {was}')


def probe_index(url: str, timeout: float = 30.0) -> None:
    """Raises GpuEnvError when the wheel index ``url`` cannot be reached."""
    try:
        with urllib.request.urlopen(url.rstrip('/') + '/torch/', timeout=timeout) as response:
            response.read(1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, 'reason', exc)
        raise GpuEnvError(f'cannot reach the wheel index {url} ({reason}): give this node access '
                          f'to it (proxy: https_proxy), or install torch {TORCH_VERSION} with its '
                          'torchvision into PYTHON yourself and rerun (setup keeps a CUDA torch)'
                          ) from None


def assemble_cuda_home(roots: Sequence[Path], dest: Path) -> Path:
    """A CUDA_HOME folder made of links into NVIDIA's PyPI packages.

    ``roots`` are the packages' folders (``site-packages/nvidia/cu13``); ``dest`` gets ``bin/``,
    ``nvvm/``, ``include/`` and ``lib64/`` whose entries link to theirs (the first root wins on a
    clash), and ``lib64/libX.so`` for each ``libX.so.N`` that lacks it, for the linker.
    """
    if dest.exists():
        shutil.rmtree(dest)
    for sub, target in (('bin', 'bin'), ('include', 'include'), ('lib', 'lib64'),
                        ('lib64', 'lib64'), ('nvvm', 'nvvm')):
        for root in roots:
            folder = Path(root) / sub
            if not folder.is_dir():
                continue
            (dest / target).mkdir(parents=True, exist_ok=True)
            for entry in folder.iterdir():
                link = dest / target / entry.name
                if entry.name != '__init__.py' and entry.name != '__pycache__' \
                        and not link.exists():
                    link.symlink_to(entry.resolve())
    libs = dest / 'lib64'
    if libs.is_dir():
        for entry in list(libs.iterdir()):
            m = re.fullmatch(r'(lib.+\.so)\.\d+', entry.name)
            if m and not (libs / m.group(1)).exists():
                (libs / m.group(1)).symlink_to(entry.resolve())
    if not (dest / 'bin' / 'nvcc').exists():
        raise GpuEnvError(f'no nvcc in {", ".join(map(str, roots))}: reinstall the toolkit '
                          'packages (pip install --force-reinstall nvidia-cuda-nvcc ...)')
    return dest


def package_roots(dists: Iterable[str]) -> list:
    """The ``site-packages/nvidia/<x>`` folders the installed ``dists`` put files into (run with
    the environment's interpreter)."""
    from importlib import metadata
    roots = []
    for name in dists:
        dist = metadata.distribution(re.split(r'[=<>]', name)[0])
        for file in dist.files or ():
            parts = Path(str(file)).parts
            if len(parts) > 2 and parts[0] == 'nvidia':
                root = Path(str(dist.locate_file(Path(parts[0]) / parts[1])))
                if root not in roots:
                    roots.append(root)
    return roots


# ---------------------------------------------------------------------------------------------
# Command line (used by tools/setup_env.sh)


def _assign(**values: object) -> str:
    return ''.join(f'{k}={shlex.quote("" if v is None else str(v))}\n' for k, v in values.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='gpu_env.py', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('targets', help='the GPU targets (CFM_CUDA_ARCHS, else nvidia-smi)')
    p = sub.add_parser('plan-torch', help='targets and torch build, as shell assignments')
    p.add_argument('--installed', nargs=2, metavar=('VERSION', 'CUDA'),
                   help="the environment's torch and its CUDA ('none' for a CPU build)")
    p = sub.add_parser('plan-mmcv', help='mmcv build and toolkit, as shell assignments')
    p.add_argument('--torch-tag', required=True)
    p.add_argument('--torch-cuda', default='none')
    p.add_argument('--targets', default='', help='what plan-torch printed as CFM_TARGETS')
    p.add_argument('--installed-ok', action='store_true')
    p.add_argument('--record', default=None, help='the MMCV_RECORD file of the environment')
    p = sub.add_parser('probe-index', help='fail with one line when a wheel index is unreachable')
    p.add_argument('url')
    p = sub.add_parser('cuda-home', help='assemble CUDA_HOME from installed toolkit packages')
    p.add_argument('dest', type=Path)
    p.add_argument('dists', nargs='+')
    p = sub.add_parser('gpus', help='list the NVIDIA GPUs')
    args = parser.parse_args(argv)
    try:
        if args.command == 'targets':
            targets = gpu_targets(query_gpus(), os.environ.get(ARCHS_KNOB))
            sys.stdout.write(_assign(CFM_TARGETS=';'.join(map(format_capability, targets))))
        elif args.command == 'plan-torch':
            gpus = query_gpus()
            targets = gpu_targets(gpus, os.environ.get(ARCHS_KNOB))
            installed = None
            if args.installed:
                installed = (args.installed[0],
                             None if args.installed[1] == 'none' else args.installed[1])
            choice = choose_torch(targets, gpus, installed, os.environ.get('CFM_TORCH'))
            sys.stdout.write(_assign(CFM_TARGETS=';'.join(map(format_capability, targets)),
                                     TORCH_REQ=choice.requirements, TORCH_INDEX=choice.index_url,
                                     TORCH_LINE=choice.reason))
        elif args.command == 'plan-mmcv':
            targets = parse_archs(args.targets) or []
            record = None
            if args.record and os.path.isfile(args.record):
                record = Path(args.record).read_text().strip() or None
            plan = plan_mmcv(args.torch_tag, None if args.torch_cuda == 'none' else
                             args.torch_cuda, targets, args.installed_ok, record,
                             find_system_nvcc() if targets else None,
                             os.environ.get(TOOLKIT_KNOB) or 'auto')
            toolkit = plan.toolkit
            sys.stdout.write(_assign(
                MMCV_KEY=plan.key, MMCV_REBUILD=int(plan.rebuild), MMCV_ARCH_LIST=plan.arch_list,
                TOOLKIT_SOURCE=toolkit.source if toolkit else '',
                TOOLKIT_HOME=toolkit.cuda_home if toolkit else '',
                TOOLKIT_REQ=' '.join(toolkit.requirements) if toolkit else '',
                MMCV_LINE=plan.reason))
        elif args.command == 'probe-index':
            probe_index(args.url)
        elif args.command == 'cuda-home':
            print(assemble_cuda_home(package_roots(args.dists), args.dest))
        elif args.command == 'gpus':
            for gpu in query_gpus():
                cap = format_capability(gpu.capability) if gpu.capability else '?'
                print(f'{gpu.index}: {gpu.name}, compute capability {cap}, driver {gpu.driver}, '
                      f'{gpu.memory_mib} MiB')
    except GpuEnvError as exc:
        print(f'[setup] {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
