"""Timers and the record every measurement carries.

GPU times use CUDA events around each call after warm-up calls (median: steady state with a warm
L2, as the peers' own benchmarks report); CPU times use perf_counter and are labelled as CPU
figures, which say nothing about GPU performance. `environment` names the device and the versions.
"""
from __future__ import annotations

import contextlib
import platform
import re
import resource
import time
from collections.abc import Callable

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    import triton

    env = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "figures": "GPU" if device.type == "cuda" else "CPU figures: not representative of GPU performance",
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


def same_device(a: str, b: str) -> bool:
    """Whether two environment device names are the same device (a CPU's thread count is a setting)."""
    strip = lambda name: re.sub(r", \d+ threads\)$", ")", name)  # noqa: E731
    return strip(a) == strip(b)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], n: int, device: torch.device) -> tuple[list[float], object]:
    """Seconds of each of n calls of fn() (CUDA events; perf_counter on a CPU), and the last result."""
    times, out = [], None
    for _ in range(n):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return times, out


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = sorted(time_calls(fn, iters, device)[0])
    return times[len(times) // 2]


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated during one call above what was allocated before (CUDA only; None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def memory(device: torch.device) -> dict:
    """The process's memory peak so far: the CUDA allocator's on a GPU, the peak RSS on a CPU."""
    if device.type == "cuda":
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device), "kind": "CUDA allocator peak"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_rss_bytes": rss, "kind": "process peak RSS (CPU)"}


def matmul_peak(device: torch.device, dtype: torch.dtype | None = None) -> tuple[float, str]:
    """(FLOP/s, label) of a large square matmul timed here: bf16 8192^3 on a GPU, fp32 512^3 on a CPU."""
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = time_fn(lambda: a @ b, device, warmup=3, iters=20 if device.type == "cuda" else 10)
    kind = str(dtype).removeprefix("torch.")
    where = "GPU" if device.type == "cuda" else "CPU"
    return 2 * n ** 3 / sec, f"measured {kind} {n}^3 matmul ({where})"


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device):
    """`threads` intra-op threads on a CPU while inside (restored after); no-op on a GPU or for None."""
    if threads is None or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
