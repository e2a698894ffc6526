"""Timing and reporting shared by every benchmark.

GPU timings use CUDA events around each of `iters` launches after `warmup` launches (median;
steady state with a warm L2, as the peers' own benchmarks report); CPU timings use
perf_counter and are labelled as CPU figures: they say nothing about H100 performance.
Every result records the device, the versions, and each peer measured in the same run.
The timers and the environment record are the library's own (cosmos_models.perf), so a
benchmark and an MFU measurement time the same way.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from cosmos_kernels.testing import rel_err, threshold
from cosmos_models.perf.report import print_table, write_json
from cosmos_models.perf.timing import device_name, environment, peak_memory, time_fn

__all__ = ["print_table", "write_json", "device_name", "environment", "peak_memory", "time_fn", "ours_backends",
           "as_tuple", "forward_backward", "backward_only", "copy_bandwidth", "bandwidth_rows"]


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
