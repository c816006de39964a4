"""CUDA-event timing shared by the standalone GPU scripts next to it (run as files, so they import
this module by its bare name)."""

from __future__ import annotations

import statistics

import torch


def median_ms(fn, reps: int = 20, warmup: int = 5) -> float:
    """Median of `reps` CUDA-event timings of `fn()` on the current stream, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
