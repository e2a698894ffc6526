"""Timing and reporting shared by every benchmark.

GPU timings use CUDA events around each of `iters` launches after `warmup` launches (median;
steady state with a warm L2, as the peers' own benchmarks report); CPU timings use
perf_counter and are labelled as CPU figures: they say nothing about H100 performance.
Every result records the device, the versions, and each peer measured in the same run.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cosmos_kernels.testing import rel_err, threshold


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


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated during one call (CUDA only; None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def ours_backends(op: str, device: torch.device) -> list[str]:
    """Our backends of `op` that can run on `device` ("torch" is the custom op over the reference:
    its dispatch overhead shows against a plain "torch-eager" peer)."""
    from cosmos_kernels import dispatch

    info = dispatch.registered_ops()[op]
    return [b for b in info.backends if not dispatch.unavailable_reason(b, device)]


def as_tuple(x) -> tuple | list:
    return x if isinstance(x, (tuple, list)) else (x,)


def forward_backward(fn: Callable, inputs, grads) -> Callable[[], tuple]:
    """A callable running fn(*inputs) forward and backward from the fixed output gradients `grads`
    (the first len(outputs) of them); returns the gradients of every input."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        outs = as_tuple(fn(*leaves))
        return torch.autograd.grad(outs, leaves, grads[:len(outs)])
    return run


def backward_only(fn: Callable, inputs, grad) -> Callable[[], tuple]:
    """A callable timing the backward alone: the forward graph is built once and kept (retain_graph)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)


def copy_bandwidth(nbytes: int, device: torch.device) -> float:
    """Achieved bytes/s (read + write) of a device-to-device copy of `nbytes`, the memory-bound peer."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    sec = time_fn(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / sec


def bandwidth_rows(op: str, shape, dtype, nbytes: int, ours: dict, peers: dict, expect, device, quick,
                   grad: bool = False) -> list[dict]:
    """Rows for one memory-bound op: each of ours and each peer, GB/s, and the copy bandwidth.
    `grad`: the outputs are gradients (their accuracy threshold is 2x)."""
    iters = 3 if quick else 20
    copy = copy_bandwidth(nbytes, device) if device.type == "cuda" else None
    peer_ms = {}
    rows = []
    for name, fn in peers.items():
        try:
            ms = time_fn(fn, device, warmup=2 if quick else 5, iters=iters) * 1e3
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
            rows.append(dict(op=op, shape=str(shape), dtype=str(dtype)[6:], impl=name, ms=None, ok=None,
                             note=f"{type(exc).__name__}: {exc}"[:120]))
            continue
        peer_ms[name] = ms
        rows.append(dict(op=op, shape=str(shape), dtype=str(dtype)[6:], impl=name, ms=ms,
                         **{"GB/s": nbytes / ms / 1e6}))
    best_peer = min(peer_ms.values()) if peer_ms else None
    for name, fn in ours.items():
        out = fn()
        err = max(rel_err(o, e) for o, e in zip(as_tuple(out), as_tuple(expect)))
        ms = time_fn(fn, device, warmup=2 if quick else 5, iters=iters) * 1e3
        row = dict(op=op, shape=str(shape), dtype=str(dtype)[6:], impl=f"ours:{name}", ms=ms,
                   **{"GB/s": nbytes / ms / 1e6}, rel_err=err, ok=err <= threshold(dtype, grad=grad),
                   vs_peer=(best_peer / ms) if best_peer else None)
        if copy:
            row["copy_GB/s"] = copy / 1e9
            row["frac_of_copy"] = nbytes / (ms / 1e3) / copy
        rows.append(row)
    return rows


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
