"""Timing and memory measurement shared by the backbone benchmarks (run inside one subprocess per
case, so that the peak RSS belongs to that case alone)."""
import os
import resource
import time
from typing import Dict


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def time_backbone(model, x, backward: bool, iters: int, warmup: int) -> Dict[str, float]:
    """Best and median time of ``iters`` forward (+ backward) passes after ``warmup`` ones.

    Returns images/s of the best pass, the peak RSS of the process and its growth since the
    input was made (activations and workspace).
    """
    import torch
    model.train(backward)
    base = rss_mib()

    def step() -> None:
        if backward:
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    best = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(img_s=x.shape[0] / best, best_s=best, median_s=sorted(times)[len(times) // 2],
                peak_mib=peak, act_mib=peak - base)
