"""Verify the environment: torch, CUDA, the driver, each GPU, and what serves it.

    python tools/misc/check_env.py              # report; check what this machine has
    python tools/misc/check_env.py --gpu        # ... and require at least one usable GPU
    python tools/misc/check_env.py --cpu-only   # a CPU run: GPUs are reported, not required
    python tools/misc/check_env.py --arch 7.0 9.0   # also check these GPU archs (login node)
    python tools/misc/check_env.py --launch     # what tools/dist_*.sh check before starting

For each NVIDIA GPU (``nvidia-smi``) and each ``--arch``: whether torch's build has kernels for
its architecture (``torch.cuda.get_arch_list()``), whether mmcv's CUDA ops do (read from the
cubins in mmcv's compiled ``_ext`` library), whether the Triton MSDA kernels compile for it ahead
of time (no launch, no GPU needed), and which MSDA implementation each device takes. Exits 1 with
one line per problem, each with its fix, when something the requested run needs is missing;
``--launch`` prints only those lines (nothing when all is well).
"""
import argparse
import importlib
import os.path as osp
import platform
import sys
from typing import List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # the checkout's package, also when it is not installed
    sys.path.insert(0, ROOT)

#: The OpenMMLab packages reported; mmengine and mmcv are needed, plus at least one toolbox.
TOOLBOXES = ('mmdet', 'mmseg', 'mmpretrain')
DTYPES = ('float32', 'float16', 'bfloat16', 'float64')


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--gpu', action='store_true', help='require at least one usable GPU')
    mode.add_argument('--cpu-only', action='store_true',
                      help='a CPU run: report the GPUs but do not require them to work')
    parser.add_argument('--launch', action='store_true',
                        help='only check that torch can use the GPUs nvidia-smi lists; print '
                        'nothing but problems')
    parser.add_argument('--arch', nargs='+', default=[], metavar='X.Y',
                        help='GPU architectures to check besides the visible GPUs, e.g. 7.0 9.0')
    parser.add_argument('--dtypes', nargs='+', default=['float32'], choices=DTYPES,
                        help='dtypes of the ahead-of-time Triton compile (default: float32)')
    parser.add_argument('--no-triton', action='store_true',
                        help='skip the ahead-of-time Triton compile')
    return parser.parse_args(argv)


def version_of(module: str) -> Tuple[Optional[str], str]:
    """(version or None, what to print) for an importable module."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # not installed, or broken: report, do not crash
        if isinstance(exc, ModuleNotFoundError) and exc.name == module:
            return None, 'not installed'
        return None, f'import failed: {type(exc).__name__}: {str(exc).splitlines()[0]}'
    return getattr(mod, '__version__', '?'), getattr(mod, '__version__', '?')


def triton_aot(cc: Tuple[int, int], dtypes: Sequence[str]) -> str:
    """Compile every Triton MSDA kernel for ``cc`` ahead of time: 'ok (N kernels)' or why not."""
    import torch
    try:
        from crossformer_mm.ops.msda_triton import compile_ahead
    except ImportError as exc:
        return f'not available ({type(exc).__name__}: {str(exc)[:60]})'
    count = 0
    for name in dtypes:
        try:
            count += len(compile_ahead(10 * cc[0] + cc[1], getattr(torch, name)))
        except Exception as exc:  # a compile error: the op falls back, say why
            return f'FAILED for {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}'
    return f'ok ({count} kernels, {"/".join(dtypes)})'


def msda_path(device: str, notes: List[str]) -> str:
    """The MSDA implementation a device takes for float32 values; when it is not the device's
    own kernel (``cpu``, ``triton``), the reason goes into ``notes``."""
    import torch
    try:
        from crossformer_mm.ops import msda_backend
    except ImportError as exc:
        return f'unknown ({exc})'
    path, reason = msda_backend(torch.device(device), torch.float32)
    if path not in ('cpu', 'triton'):
        notes.append(f'MSDA on {device}: {reason}')
    return path


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return '\n'.join('  ' + '  '.join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header, *rows])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    problems: List[str] = []
    say = (lambda *a: None) if args.launch else print

    try:
        import torch
    except ImportError:
        print('torch is not installed; fix: run `bash tools/setup_env.sh`')
        return 1
    try:
        import crossformer_mm
        from crossformer_mm.utils import gpu_check
        from crossformer_mm.utils.gpu_env import GpuEnvError, installed_mmcv_build, parse_archs
    except Exception as exc:
        print(f'crossformer_mm does not import ({type(exc).__name__}: {exc}); '
              'fix: run `bash tools/setup_env.sh`')
        return 1

    gpus, smi_error = gpu_check.node_gpus()
    if args.launch:
        if not args.cpu_only and not gpu_check.cpu_requested():
            problems += [str(p) for p in gpu_check.torch_gpu_problems(gpus)]
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0

    # --- software ---------------------------------------------------------------------------
    cubins, ptx = gpu_check.parse_arch_list(gpu_check.torch_arch_list())
    cuda = (f'CUDA {torch.version.cuda}, built for {gpu_check.sm_list(cubins)}'
            + (f' + PTX {gpu_check.sm_list(ptx)}' if ptx else '')
            if torch.version.cuda else 'CPU-only build')
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    say(f'python          {platform.python_version()} ({sys.executable})')
    say(f'torch           {torch.__version__}, {cuda}; usable CUDA devices: {usable}')
    say(f'triton          {version_of("triton")[1]}')
    versions = {name: version_of(name) for name in ('mmengine', 'mmcv', *TOOLBOXES)}
    for name in ('mmengine', 'mmcv'):
        if versions[name][0] is None:
            problems.append(f'{name}: {versions[name][1]}; fix: run `bash tools/setup_env.sh`')
    if all(versions[name][0] is None for name in TOOLBOXES):
        problems.append('none of mmdet, mmseg, mmpretrain imports; fix: run '
                        '`bash tools/setup_env.sh`')
    mm_cubins, mm_ptx, mm_where = gpu_check.mmcv_cuda_archs()
    if mm_cubins is None:
        mmcv_ops = mm_where
    elif mm_cubins or mm_ptx:
        mmcv_ops = (f'CUDA ops for {gpu_check.sm_list(mm_cubins)}'
                    + (f' + PTX {gpu_check.sm_list(mm_ptx)}' if mm_ptx else '')
                    + f' (read from the cubins in {mm_where})')
    else:
        mmcv_ops = f'CPU ops only (no CUDA kernels in {mm_where})'
    record = installed_mmcv_build()
    if record is not None:  # what tools/setup_env.sh recorded when it built mmcv
        archs = ' '.join(f'sm_{c[0]}{c[1]}' for c in record[1]) or 'CPU ops only'
        mmcv_ops += f'; setup record: torch {record[0]}, {archs}'
    for name in ('mmengine', 'mmcv', *TOOLBOXES):
        extra = f'; {mmcv_ops}' if name == 'mmcv' and versions[name][0] else ''
        say(f'{name:<15} {versions[name][1]}{extra}')
    say(f'crossformer_mm  {crossformer_mm.__version__} ({osp.dirname(crossformer_mm.__file__)})')
    driver = gpus[0].driver if gpus else None
    say(f'NVIDIA driver   {driver or smi_error or "none (nvidia-smi lists no GPU)"}')

    # --- devices ----------------------------------------------------------------------------
    try:
        targets = [(f'arch {c[0]}.{c[1]}', None, c)
                   for c in parse_archs(' '.join(args.arch)) or []]
    except GpuEnvError as exc:
        print(f'error: --arch: {exc}', file=sys.stderr)
        return 2
    torch_problems = [] if args.cpu_only else gpu_check.torch_gpu_problems(gpus)
    rows = []
    mmcv_missing = {}  # sm_XY: devices mmcv's CUDA ops do not serve
    notes: List[str] = []  # why a device does not take its own MSDA kernel
    for label, gpu, cc in [(f'GPU {g.index}', g, g.capability) for g in gpus] + targets:
        if cc is None:  # a driver too old to report it: torch_gpu_problems says so
            rows.append((label, gpu.name, '?', f'{gpu.memory_mib / 1024:.0f} GiB', '?', '?', '-',
                         'none: torch cannot use this GPU'))
            continue
        sm = f'sm_{cc[0]}{cc[1]}'
        torch_ok = bool(torch.version.cuda) and gpu_check.arch_served(cc, cubins, ptx)
        mmcv_ok = mm_cubins is not None and gpu_check.arch_served(cc, mm_cubins, mm_ptx)
        aot = 'skipped' if args.no_triton else triton_aot(cc, args.dtypes)
        if gpu is not None and torch.cuda.is_available() and gpu.index < usable:
            path = msda_path(f'cuda:{gpu.index}', notes)
        elif gpu is not None:
            path = 'none: torch cannot use this GPU'
        else:
            path = '-'
        name = gpu.name if gpu else '(target)'
        memory = f'{gpu.memory_mib / 1024:.0f} GiB' if gpu else '-'
        rows.append((label, name, sm, memory, 'yes' if torch_ok else 'NO',
                     'yes' if mmcv_ok else 'NO', aot, path))
        if not mmcv_ok and mm_cubins is not None:
            mmcv_missing.setdefault(sm, []).append(label)
        if not args.cpu_only and gpu is None and not torch_ok:
            problems.append(f'torch {torch.__version__} has no kernels for {sm} ({label}); fix: '
                            f'{gpu_check.SETUP_FIX}')
    if mmcv_missing and not args.cpu_only:
        which = ', '.join(f'{sm} ({", ".join(labels)})' for sm, labels in mmcv_missing.items())
        have = (f'CUDA kernels for {gpu_check.sm_list(mm_cubins)} only' if mm_cubins or mm_ptx
                else 'no CUDA kernels (built where no GPU was visible?)')
        archs = ';'.join(f'{sm[3:-1]}.{sm[-1]}' for sm in mmcv_missing)
        problems.append(
            f'mmcv\'s compiled ops have {have}, none for {which}: RoIAlign / NMS (Mask R-CNN, '
            f'RetinaNet) fail there; fix: rerun `bash tools/setup_env.sh` on the GPU node, or '
            f'`CFM_CUDA_ARCHS="{archs}" bash tools/setup_env.sh` where none is visible: it '
            f'rebuilds mmcv for them')
    rows.append(('cpu', platform.processor() or platform.machine(), '-', '-', 'yes', '-', '-',
                 msda_path('cpu', notes)))
    say('\n' + table(('device', 'name', 'arch', 'memory', 'torch', 'mmcv ops',
                      'triton (ahead of time)', 'MSDA path'), rows))
    for note in notes:
        say(f'  {note}')
    problems = [str(p) for p in torch_problems] + problems
    if args.gpu and not (gpus and torch.cuda.is_available()):
        problems.append('no usable NVIDIA GPU (--gpu); fix: run on a GPU node' if not gpus else
                        'no usable NVIDIA GPU (--gpu): see the lines above')

    if problems:
        print(f'\n{len(problems)} problem{"s" if len(problems) > 1 else ""}:')
        for line in problems:
            print(f'  - {line}')
        return 1
    mode = 'CPU' if args.cpu_only or not gpus else f'{len(gpus)} GPU{"s" if len(gpus) > 1 else ""}'
    print(f'\nok: this environment can run here ({mode})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
