"""Timing shared by the benchmarks: cases run interleaved, so drifts in machine load hit every case alike."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of fn(), with the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(cases: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each case over `repeats` rounds that run every case once, after one warm-up round."""
    times = {name: [] for name in cases}
    for fn in cases.values():  # warm-up (allocator, TorchScript profiling runs)
        fn()
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}
