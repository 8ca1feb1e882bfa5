"""Can this process use the node's NVIDIA GPUs, and do the compiled CUDA kernels cover them?

One diagnosis shared by ``tools/misc/check_env.py`` (the verify command) and the train / test
tools, which refuse to train on the CPU on a node whose GPUs torch cannot use (a CPU-only torch,
a driver too old for torch's CUDA, a torch build without kernels for the GPU's architecture)
instead of silently running there.

The GPUs come from ``nvidia-smi`` (:func:`crossformer_mm.utils.gpu_env.query_gpus`), not from
torch: torch reports no device in exactly the cases diagnosed here. Which architectures a
compiled library holds is read from its ``.nv_fatbin`` ELF section (:func:`fatbin_archs`), so
that mmcv's CUDA ops are checked without a GPU and without the CUDA toolkit.

Running on the CPU is explicit: ``--cpu`` on the tools or ``CFM_ALLOW_CPU=1`` (both hide the GPUs
with ``CUDA_VISIBLE_DEVICES=``); an empty ``CUDA_VISIBLE_DEVICES`` set by the user counts too.
"""
import glob
import importlib.util
import os
import struct
from typing import Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from .gpu_env import (Capability, GpuEnvError, min_driver_for_cuda, parse_version, query_gpus,
                      served_by)

#: The fatbin container magic (``fatBinaryHeader.magic``) and entry kinds.
_FATBIN_MAGIC = 0xBA55ED50
_KIND_PTX, _KIND_CUBIN = 1, 2

#: Environment variable that allows (and asks for) a CPU run on a node with GPUs.
ALLOW_CPU_ENV = 'CFM_ALLOW_CPU'

SETUP_FIX = ('remove the environment (.venv or $CFM_VENV) and rerun `bash tools/setup_env.sh` on '
             'this GPU node: it installs the torch build that serves its GPUs')
CPU_FIX = f'to run on the CPU on purpose, pass --cpu or set {ALLOW_CPU_ENV}=1'


class GPUUnusableError(RuntimeError):
    """The node has NVIDIA GPUs that torch cannot use (printed as one line by the tools)."""


class Problem(NamedTuple):
    """Something the requested run needs that is missing: why, and what to do."""
    reason: str
    fix: str

    def __str__(self) -> str:
        return f'{self.reason}; fix: {self.fix}'


# ------------------------------------------------------------------------------------------
# Architectures in compiled code
# ------------------------------------------------------------------------------------------


def fatbin_archs(path: str) -> Tuple[Set[int], Set[int]]:
    """The architectures (``sm_XY`` as ``XY``) of the cubins and of the PTX in the ``.nv_fatbin``
    section of the ELF shared library ``path``; two empty sets when it has no device code.

    Reads only the headers (the fatbin entry header holds its kind at offset 0, its header size
    at 4, its payload size at 8 and its ``sm`` version at 28, as ``cuobjdump --list-elf`` lists
    them), so it takes milliseconds even on torch's 500 MB ``libtorch_cuda.so``.
    """
    cubins: Set[int] = set()
    ptx: Set[int] = set()
    with open(path, 'rb') as f:
        ident = f.read(64)
        if ident[:4] != b'\x7fELF' or ident[4] != 2:  # 64-bit ELF only
            raise ValueError(f'{path} is not a 64-bit ELF file')
        e_shoff = struct.unpack_from('<Q', ident, 0x28)[0]
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from('<HHH', ident, 0x3A)

        def section(i: int) -> tuple:
            f.seek(e_shoff + i * e_shentsize)
            # name, type, flags, addr, offset, size
            return struct.unpack('<IIQQQQ', f.read(40))

        names_offset = section(e_shstrndx)[4]
        start = size = None
        for i in range(e_shnum):
            sec = section(i)
            f.seek(names_offset + sec[0])
            if f.read(11) == b'.nv_fatbin\0':
                start, size = sec[4], sec[5]
                break
        if start is None:
            return cubins, ptx
        pos, end = start, start + size
        while pos + 16 <= end:
            f.seek(pos)
            magic, _, header_size, fat_size = struct.unpack('<IHHQ', f.read(16))
            if magic != _FATBIN_MAGIC:  # padding between containers
                pos += 8
                continue
            entry, stop = pos + header_size, pos + header_size + fat_size
            while entry + 32 <= stop:
                f.seek(entry)
                head = f.read(32)
                kind, _, entry_header, payload = struct.unpack_from('<HHIQ', head)
                arch = struct.unpack_from('<I', head, 28)[0]
                (cubins if kind == _KIND_CUBIN else ptx if kind == _KIND_PTX else set()).add(arch)
                if entry_header == 0:
                    break
                entry += entry_header + payload
            pos = stop
    return cubins, ptx


def mmcv_cuda_archs() -> Tuple[Optional[Set[int]], Optional[Set[int]], str]:
    """(cubin archs, PTX archs, the library they were read from) of mmcv's compiled ops, read
    without importing them; ``None, None, why`` when mmcv or its compiled ops are missing."""
    spec = importlib.util.find_spec('mmcv')
    if spec is None or not spec.submodule_search_locations:
        return None, None, 'mmcv is not installed'
    found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], '_ext*.so')))
    if not found:
        return None, None, 'mmcv has no compiled ops (mmcv._ext is missing)'
    cubins, ptx = fatbin_archs(found[0])
    return cubins, ptx, os.path.basename(found[0])


def parse_arch_list(arch_list: Iterable[str]) -> Tuple[Set[int], Set[int]]:
    """``torch.cuda.get_arch_list()`` (``sm_90``, ``compute_90``) as (cubin archs, PTX archs)."""
    cubins, ptx = set(), set()
    for item in arch_list:
        kind, _, number = item.partition('_')
        digits = ''.join(c for c in number if c.isdigit())
        if digits:
            (ptx if kind == 'compute' else cubins).add(int(digits))
    return cubins, ptx


def torch_arch_list() -> List[str]:
    """``torch.cuda.get_arch_list()``: the architectures torch's CUDA kernels were built for, also
    where CUDA cannot start (a node without GPUs, a driver problem), where older torch (2.1
    among them) returns an empty list; empty for a CPU-only build."""
    import torch
    archs = torch.cuda.get_arch_list()
    if archs or not torch.version.cuda:
        return archs
    flags = getattr(torch._C, '_cuda_getArchFlags', lambda: None)()
    return flags.split() if flags else []


def arch_served(capability: Capability, cubins: Set[int], ptx: Set[int]) -> bool:
    """Whether a GPU of compute capability ``capability`` runs code holding ``cubins`` / ``ptx``
    (``sm_XY`` as ``XY``): a cubin it runs (:func:`~.gpu_env.served_by`), or PTX of an
    architecture not above it (the driver compiles it)."""
    return (served_by(capability, [(a // 10, a % 10) for a in cubins]) or
            any(a <= 10 * capability[0] + capability[1] for a in ptx))


def sm_list(archs: Iterable[int]) -> str:
    return ' '.join(f'sm_{a}' for a in sorted(archs)) or 'none'


# ------------------------------------------------------------------------------------------
# Torch and the node's GPUs
# ------------------------------------------------------------------------------------------


def cpu_requested() -> bool:
    """Whether the user asked for a CPU run: ``CFM_ALLOW_CPU=1`` or an empty / ``-1``
    ``CUDA_VISIBLE_DEVICES``."""
    if os.environ.get(ALLOW_CPU_ENV, '') not in ('', '0'):
        return True
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    return visible is not None and visible.strip() in ('', '-1')


def request_cpu() -> None:
    """Run on the CPU: hide the GPUs from torch (before it initialises CUDA) and from child
    processes, and mark the choice for them."""
    os.environ['CUDA_VISIBLE_DEVICES'] = ''
    os.environ[ALLOW_CPU_ENV] = '1'


def node_gpus() -> Tuple[list, Optional[str]]:
    """The node's NVIDIA GPUs and, when ``nvidia-smi`` is there but fails (e.g. a login node with
    the driver tools but no GPU), its one-line error instead of the list."""
    try:
        return query_gpus(), None
    except GpuEnvError as exc:
        return [], str(exc)


def torch_gpu_problems(gpus: Optional[Sequence] = None) -> List[Problem]:
    """Why torch in this process cannot use the node's GPUs (``nvidia-smi``'s list, or
    ``gpus``); empty when it can, or when the node has none (or ``nvidia-smi`` fails: nothing
    shows that GPUs are there)."""
    import torch
    if gpus is None:
        gpus = node_gpus()[0]
    if not gpus:
        return []
    names = ', '.join(sorted({g.name for g in gpus}))
    where = f'this node has {len(gpus)} NVIDIA GPU{"s" if len(gpus) > 1 else ""} ({names})'
    if not torch.version.cuda:
        return [Problem(f'torch {torch.__version__} is a CPU-only build but {where}',
                        SETUP_FIX)]
    problems = []
    try:
        need = min_driver_for_cuda(torch.version.cuda)
        old = parse_version(gpus[0].driver) < need
    except (GpuEnvError, ValueError):  # a CUDA major or a driver string this check cannot read
        old = False
    if old:
        problems.append(Problem(
            f'the NVIDIA driver {gpus[0].driver} is too old for torch {torch.__version__} '
            f'(CUDA {torch.version.cuda} needs >= {".".join(map(str, need))})',
            f'update the driver, or {SETUP_FIX} and driver'))
    cubins, ptx = parse_arch_list(torch_arch_list())
    for cap in sorted({g.capability for g in gpus if g.capability is not None}):
        if not arch_served(cap, cubins, ptx):
            which = ', '.join(str(g.index) for g in gpus if g.capability == cap)
            model = next(g.name for g in gpus if g.capability == cap)
            problems.append(Problem(
                f'torch {torch.__version__} (CUDA {torch.version.cuda}) has no kernels for '
                f'sm_{cap[0]}{cap[1]} ({model}, GPU {which}); it was built for '
                f'{sm_list(cubins)}', SETUP_FIX))
    if not problems and not torch.cuda.is_available():
        try:
            torch.cuda.init()
            detail = 'torch.cuda.is_available() is False'
        except Exception as exc:  # the reason CUDA could not start, e.g. a driver error
            detail = str(exc).splitlines()[0]
        problems.append(Problem(f'torch cannot use the GPUs ({where}): {detail}',
                                'check the driver with `nvidia-smi`, then rerun'))
    return problems


def refuse_cpu_on_gpu_node(cpu: bool = False) -> None:
    """For the train / test tools: with ``cpu`` (``--cpu``) or ``CFM_ALLOW_CPU=1`` hide the GPUs;
    else, unless ``CUDA_VISIBLE_DEVICES`` is empty, raise :class:`GPUUnusableError` when the node
    has GPUs torch cannot use."""
    if cpu or os.environ.get(ALLOW_CPU_ENV, '') not in ('', '0'):
        request_cpu()
        return
    if cpu_requested():
        return
    problems = torch_gpu_problems()
    if problems:
        raise GPUUnusableError(f'refusing to start: {problems[0]} ({CPU_FIX})')


__all__ = ['ALLOW_CPU_ENV', 'GPUUnusableError', 'Problem', 'arch_served', 'cpu_requested',
           'fatbin_archs', 'mmcv_cuda_archs', 'node_gpus', 'parse_arch_list',
           'refuse_cpu_on_gpu_node', 'request_cpu', 'sm_list', 'torch_gpu_problems']
