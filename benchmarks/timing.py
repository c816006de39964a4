"""Timing and memory measurement, shared by every provider (in this process and in the upstream
worker subprocess). Imports torch only, never mlstm_kernels, so the upstream worker can use it.

GPU: CUDA events around each call after a warm-up, median of >= 30 runs. The inputs are several
independent random sets, rotated call by call, so that together they exceed the L2 cache and no
call reads inputs the previous one left in cache. Before each timed call the GPU is given a short
spin kernel (longer than the call's host-side launch cost), so the host has queued the whole call
before the GPU reaches it: the events then measure GPU time, not Python and launch overhead, which
matters for microsecond kernels such as the step. For short calls the back-to-back wall time per
call (host overhead included, as a loop without CUDA graphs sees it) is recorded as `ms_wall`.
CPU (--quick): time.perf_counter, few repeats.
Peak memory: torch.cuda.max_memory_allocated during one call, minus what was allocated before it
(the memory the call itself needs: outputs, saved activations, workspace, gradients).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

# Bytes of input sets to keep live for rotation: several times a large L2 (H100: 50 MiB).
ROTATION_BYTES_GPU = 256 << 20
MAX_INPUT_SETS = 64


@dataclass
class Settings:
    device: str  # "cuda" or "cpu"
    warmup: int
    repeats: int
    # Stop repeating once this much time was spent on one point (but never below min_repeats).
    max_seconds: float = 20.0
    min_repeats: int = 30

    def as_dict(self) -> dict:
        return dict(device=self.device, warmup=self.warmup, repeats=self.repeats,
                    max_seconds=self.max_seconds, min_repeats=self.min_repeats)


@dataclass
class Workload:
    """What to time: `make_inputs(seed)` builds one independent input set (a dict of tensors), and
    `call(inputs)` runs the kernel once on it (forward, or forward+backward)."""

    make_inputs: Callable[[int], dict[str, Any]]
    call: Callable[[dict[str, Any]], Any]


@functools.lru_cache(maxsize=None)
def _spin_cycles_per_ms() -> float | None:
    """GPU clock cycles per millisecond of torch.cuda._sleep, calibrated once (None if the spin
    kernel is not available in this torch)."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is None:
        return None
    cycles = 10_000_000
    sleep(cycles)  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / start.elapsed_time(end)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def failure(exc: BaseException) -> dict:
    """A result record for a call that raised, with a one-line reason: 'oom'; 'unsupported' for a
    ValueError (how the kernels refuse shapes beyond their limits); otherwise 'failed'."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        status = "oom"
    elif isinstance(exc, ValueError):
        status = "unsupported"
    else:
        status = "failed"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    origin = f" [{where.filename.rsplit('/', 1)[-1]}:{where.lineno}]" if where else ""
    return {"status": status, "reason": f"{type(exc).__name__}: {message[:300]}{origin}"}


def measure(workload: Workload, settings: Settings) -> dict:
    """Time `workload` and measure its peak memory. Returns a result record (status 'ok' with
    ms/ms_p20/ms_p80/n_runs/peak_mem_mb, or 'failed'/'oom' with a reason). Never raises for a
    failing kernel."""
    device = settings.device
    sets: list[dict] = []
    try:
        sets.append(workload.make_inputs(0))
        set_bytes = max(tensor_bytes(sets[0]), 1)
        n_sets = 1
        if device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            # Enough sets to exceed the L2 several times over, within a quarter of free memory.
            n_sets = min(MAX_INPUT_SETS, math.ceil(ROTATION_BYTES_GPU / set_bytes),
                         max(1, int(free * 0.25 // set_bytes)))
        sets += [workload.make_inputs(seed) for seed in range(1, n_sets)]

        host_ms = []
        for w in range(max(settings.warmup, 1)):
            _sync(device)
            t0 = time.perf_counter()
            workload.call(sets[w % n_sets])
            host_ms.append((time.perf_counter() - t0) * 1e3)
        _sync(device)
        # The spin before each timed call outlasts the host-side cost of issuing the call.
        spin_cycles = 0
        if device == "cuda" and (per_ms := _spin_cycles_per_ms()):
            spin_cycles = int(per_ms * min(max(2.0 * min(host_ms), 0.05), 20.0))

        peak_mb = None
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            workload.call(sets[0])
            torch.cuda.synchronize()
            peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20

        times_ms = []
        started = time.perf_counter()
        for r in range(max(settings.repeats, 1)):
            inputs = sets[r % n_sets]
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                if spin_cycles:
                    torch.cuda._sleep(spin_cycles)
                start.record()
                workload.call(inputs)
                end.record()
                end.synchronize()
                times_ms.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                workload.call(inputs)
                times_ms.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - started > settings.max_seconds and r + 1 >= settings.min_repeats:
                break
        ms_wall = None
        if device == "cuda" and statistics.median(times_ms) < 1.0:
            # Back-to-back calls, no spin: what a loop without CUDA graphs gets per call.
            n_calls = max(settings.repeats, 30)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for r in range(n_calls):
                workload.call(sets[r % n_sets])
            end.record()
            end.synchronize()
            ms_wall = start.elapsed_time(end) / n_calls
    except Exception as exc:  # a crashing provider is recorded, never fatal
        return failure(exc)
    finally:
        sets.clear()
        if device == "cuda":
            torch.cuda.empty_cache()

    times_ms.sort()
    q = statistics.quantiles(times_ms, n=5) if len(times_ms) >= 2 else [times_ms[0]] * 4
    return {
        "status": "ok",
        "ms": statistics.median(times_ms),
        "ms_p20": q[0],
        "ms_p80": q[3],
        "ms_wall": ms_wall,
        "gpu_time_only": bool(spin_cycles),
        "n_runs": len(times_ms),
        "n_input_sets": n_sets,
        "peak_mem_mb": peak_mb,
    }


def copy_bandwidth_gbps(device: str, nbytes: int | None = None, repeats: int = 20) -> float:
    """Device-to-device copy rate in GB/s (bytes read + bytes written per second), measured with
    the same timer as the kernels: the floor for a memory-bound kernel such as the step."""
    if nbytes is None:
        nbytes = (1 << 30) if device == "cuda" else (64 << 20)
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    workload = Workload(make_inputs=lambda seed: {"src": src, "dst": dst},
                        call=lambda t: t["dst"].copy_(t["src"]))
    result = measure(workload, Settings(device=device, warmup=3, repeats=repeats, min_repeats=repeats))
    del src, dst
    if result["status"] != "ok":
        raise RuntimeError(f"copy bandwidth measurement failed: {result['reason']}")
    return 2 * nbytes / (result["ms"] * 1e-3) / 1e9
