"""Where a measurement runs: device and dtype names, synchronisation, timing and peak memory.

CUDA and MPS run asynchronously: a kernel launch returns before the work is
done, so ``time.perf_counter()`` around a call measures the launch only.
:func:`timed` therefore synchronises the device before starting the clock and
before reading it (on CUDA with device events), and :func:`median_time` runs a
warm-up first and returns the median of repeats. :func:`peak_memory` is the
device's own allocator peak (``torch.cuda.max_memory_allocated``); on a CPU there
is no such counter and it is ``None`` (printed ``n/a``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["DTYPES", "check_device", "dtype_name", "median_time", "peak_memory", "reset_peak_memory",
           "synchronize", "timed"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).replace("torch.", ""))


def check_device(name: str) -> torch.device:
    """``name`` as a ``torch.device`` that exists here; ``ValueError`` with what is allowed otherwise."""
    allowed = "expected cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(allowed) from None
    if device.type not in ("cpu", "cuda", "mps") or (device.type != "cuda" and device.index not in (None, 0)):
        raise ValueError(allowed)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"there are {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("MPS (Apple silicon) is not available here; use --device cpu")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait until every queued kernel on ``device`` has finished (no-op on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds ``fn()`` takes on ``device``: CUDA events between synchronisations, else a synchronised wall clock."""
    device = torch.device(device)
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start_s


def median_time(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu",
                warmup: int = 1) -> float:
    """Median of ``repeats`` (at least 3) :func:`timed` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(max(3, repeats)))


def reset_peak_memory(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> int | None:
    """Bytes allocated at the peak since :func:`reset_peak_memory` (CUDA); MPS: current driver total; CPU: None."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return None
