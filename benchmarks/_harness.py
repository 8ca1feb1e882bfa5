"""The timing and memory harness of every benchmark in this folder (and of
``tools/analysis_tools/compare.py``'s peak memory).

* :func:`time_fn`: best and median time of repeated calls after warm-up calls, with every call's
  wall and CPU time; wall clock (after an optional ``sync``) or CUDA events.
* :class:`LapTimer`: splits one pass through a sequence of steps into named parts (the parts of
  a training iteration), wall clock after an optional ``sync``.
* :func:`peak_memory`: the peak memory growth of a block of code. On CUDA it is the growth of
  ``torch.cuda.max_memory_allocated``; on the CPU the growth of the process's peak resident set
  (``VmHWM``, reset to the current RSS through ``/proc/self/clear_refs`` on entry), so that one
  process can measure several blocks one after the other. The memory at entry is kept too, for
  the absolute peak.
* :func:`run_case`: runs one case in a fresh Python process and returns the JSON dict it prints
  last, so that no case inherits another's allocator state, caches or peak.
* :data:`ISA_ENV`: environments for :func:`run_case` that limit the kernels to an instruction
  set (e.g. AVX2 on an AVX-512 CPU), checked in the child by :func:`require_isa`;
  :func:`cpu_description` names the CPU and
  :func:`code_label` the commit of a checkout, for the tables.

On the CPU the resident set also holds memory the allocator keeps after tensors are freed. A
case whose memory matters is therefore measured in its own process started with
:data:`MEMORY_ENV` (glibc maps every block above 64 KiB on its own and returns it when freed, so
that the RSS follows the live tensors), and timed in another process with the default allocator
(mapping every block slows the timed code down).

The module needs the standard library and torch only (imported when first needed) and imports
nothing from ``crossformer_mm``, so that a benchmark can import the package from another
checkout after importing this module (``backbones.py --code``) and run where the MM packages are
missing (``gpu_suite.py``).
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

#: Environment for memory runs on the CPU: the RSS follows the live tensors.
MEMORY_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536'}

#: Environments that limit the instruction set of torch's own kernels (``ATEN_CPU_CAPABILITY``),
#: oneDNN (``ONEDNN_MAX_CPU_ISA``) and MKL (``MKL_ENABLE_INSTRUCTIONS``) in a fresh process:
#: ``avx2`` runs the code paths a CPU without AVX-512 takes (on this CPU's cores, clock and
#: caches), ``native`` whatever the CPU has.
ISA_ENV = {
    'native': {},
    'avx2': {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2',
             'MKL_ENABLE_INSTRUCTIONS': 'AVX2'},
}


def require_isa(isa: str) -> None:
    """Raises if this process runs torch's kernels with another instruction set than the
    :data:`ISA_ENV` entry ``isa`` asks for (the environment came too late or was ignored)."""
    import torch
    capability = torch.backends.cpu.get_cpu_capability()
    if isa != 'native' and capability != isa.upper():
        raise RuntimeError(f'asked for {isa} kernels, torch runs {capability}')


def code_label(code: str) -> str:
    """Short commit of a checkout (``+`` when it has uncommitted changes)."""
    try:
        rev = subprocess.run(['git', '-C', code, 'rev-parse', '--short', 'HEAD'],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', code, 'status', '--porcelain', '--',
                                'crossformer_mm'], capture_output=True, text=True).stdout.strip()
        return rev + ('+' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return os.path.basename(os.path.abspath(code))


def cpu_description() -> str:
    """The CPU model and its AVX2 / AVX-512 flags, from ``/proc/cpuinfo``."""
    model, flags = 'unknown CPU', set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name':
                    model = value.strip()
                elif key.strip() == 'flags':
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = [f for f in ('avx2', 'avx512f', 'avx512_vnni', 'amx_tile') if f in flags]
    return f'{model}, {os.cpu_count()} CPUs, flags: {" ".join(isa) or "no AVX2"}'


def time_fn(fn: Callable[[], object], iters: int, warmup: int = 1,
            sync: Optional[Callable[[], None]] = None,
            cuda_events: bool = False) -> Dict[str, Any]:
    """Times ``iters`` calls of ``fn`` after ``warmup`` untimed ones.

    Args:
        fn: The code to time; its result is dropped before the next call.
        iters: Timed calls (>= 1).
        warmup: Untimed calls first.
        sync: Called after each call before the clock stops (``torch.cuda.synchronize`` for
            GPU code).
        cuda_events: Time each call on the GPU with a pair of CUDA events recorded around it
            (the time between them on the current stream, without the host's launch and
            ``sync`` latency) instead of the wall clock. Needs ``sync`` to wait for the end
            event.

    Returns:
        ``best_s``, ``median_s`` (seconds), ``iters``, and per call ``times_s`` (the timed
        seconds, in call order) and ``cpu_s`` (this process's CPU seconds, all threads,
        ``time.process_time``).
    """
    if iters < 1:
        raise ValueError(f'iters must be >= 1, got {iters}')
    if cuda_events and sync is None:
        raise ValueError('cuda_events=True needs sync (torch.cuda.synchronize)')
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    times: List[float] = []
    cpu: List[float] = []
    for _ in range(iters):
        if cuda_events:
            import torch
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if cuda_events:
            end.record()
        if sync is not None:
            sync()
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        times.append(start.elapsed_time(end) / 1e3 if cuda_events else wall)
        cpu.append(cpu_s)
    return dict(best_s=min(times), median_s=statistics.median(times), iters=iters,
                times_s=times, cpu_s=cpu)


class LapTimer:
    """Charges the wall time of consecutive steps to named parts.

    ``start()`` begins a pass; each ``lap(name)`` adds the time since the previous lap (or the
    start) to ``parts[name]``, after calling ``sync`` (``torch.cuda.synchronize`` for GPU code, so
    that queued work is charged to the step that issued it).

    Example::

        timer = LapTimer()
        timer.start()
        batch = next(loader)
        timer.lap('data')
        loss = model(batch)
        timer.lap('forward')
        print(timer.parts)  # {'data': ..., 'forward': ...}
    """

    def __init__(self, sync: Optional[Callable[[], None]] = None) -> None:
        self.sync = sync
        self.parts: Dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        """Begins a pass: forgets the parts of the previous one."""
        self.parts = {}
        if self.sync is not None:
            self.sync()
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        """Adds the seconds since the previous lap to ``parts[name]``."""
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - self._last
        self._last = now


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{field} not found in /proc/self/status')


class MemoryResult:
    """Result of :func:`peak_memory`.

    Attributes:
        device: The device measured.
        base_mib: The memory at entry (CPU: ``VmRSS``; CUDA: ``memory_allocated``), so that
            ``base_mib + peak_mib`` is the absolute peak during the block.
        peak_mib: The peak growth over ``base_mib``, set when the block ends.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.base_mib = float('nan')
        self.peak_mib = float('nan')


@contextmanager
def peak_memory(device: str = 'cpu') -> Iterator[MemoryResult]:
    """Measures the peak memory growth (MiB) of the ``with`` block on ``device``.

    The memory at entry is ``base_mib`` of the result (see :class:`MemoryResult`).

    Example::

        with peak_memory() as mem:
            model(x)
        print(mem.peak_mib)
    """
    import torch
    result = MemoryResult(device)
    gc.collect()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # VmHWM := VmRSS
        base = _status_bytes('VmRSS')
    result.base_mib = base / 2 ** 20
    yield result
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_bytes('VmHWM')
    result.peak_mib = max(peak - base, 0) / 2 ** 20


def run_case(argv: List[str], env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None) -> Optional[dict]:
    """Runs ``python argv...`` in a fresh process; returns the last JSON line it prints.

    ``env`` entries are added to this process's environment. On failure the last line of the
    child's stderr is printed and None returned.
    """
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable] + argv, capture_output=True, text=True, cwd=cwd,
                          env=full_env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ['?'])[-1]
        print(f'  {" ".join(argv[1:])}: failed ({err})', file=sys.stderr)
        return None
    return json.loads(lines[-1])


__all__ = ['ISA_ENV', 'LapTimer', 'MEMORY_ENV', 'code_label', 'cpu_description', 'require_isa',
           'time_fn', 'peak_memory', 'run_case']


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (header, separator, rows), each column padded to its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(r, widths)) + ' |'  # noqa
    return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] +
                     [line(r) for r in rows])
