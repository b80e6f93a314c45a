"""Timing shared by the benchmarks: cases run interleaved, so drifts in machine load hit every case alike, and the
peak GPU memory of each case is read from torch's allocator."""

from __future__ import annotations

import statistics
import time

import torch


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.mib`: torch.cuda.max_memory_allocated over the block, in
    MiB; None off CUDA, where torch keeps no peak of the memory it allocates."""

    def __init__(self, device: torch.device):
        self.device, self.mib = torch.device(device), None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of fn(), with the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(cases: dict, repeats: int, device: torch.device) -> tuple[dict[str, float], dict[str, float | None]]:
    """(median seconds, peak MiB) of each case: medians over `repeats` rounds that run every case once, after one
    warm-up round (allocator, compilation, TorchScript profiling runs) that measures each case's peak memory."""
    times = {name: [] for name in cases}
    peaks = {}
    for name, fn in cases.items():
        with PeakMemory(device) as peak:
            fn()
        peaks[name] = peak.mib
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}, peaks
