"""AdaLN family benchmark: time, bytes moved, GB/s against a device copy measured in the same run,
and against torch eager and torch.compile of the reference (the peers a user would pick)."""
from __future__ import annotations

import torch

import cosmos_kernels as ck
from bench.common import copy_bandwidth, time_fn
from cosmos_kernels import dispatch
from cosmos_kernels.reference import adaln as ref
from cosmos_kernels.testing import rel_err, threshold

# (B, T, N, D): the 2B model at 720p (24 latent frames of 44×80 tokens) and at 480p (30×52)
FULL_SHAPES = [(1, 24, 44 * 80, 2048), (1, 24, 30 * 52, 2048)]
QUICK_SHAPES = [(1, 4, 64, 256)]


def ours_backends(op: str, device: torch.device) -> list[str]:
    """Our backends that can run here; "torch" is the custom op over the reference (its dispatch
    overhead shows against the plain "torch-eager" peer)."""
    info = dispatch.registered_ops()[op]
    return [b for b in info.backends if not dispatch.unavailable_reason(b, device)]


def bandwidth_rows(op: str, shape, dtype, nbytes: int, ours: dict, peers: dict, expect, device, quick) -> list[dict]:
    """Rows for one memory-bound op: each of ours and each peer, GB/s, and the copy bandwidth."""
    iters = 3 if quick else 20
    copy = copy_bandwidth(nbytes, device) if device.type == "cuda" else None
    peer_ms = {}
    rows = []
    for name, fn in peers.items():
        try:
            ms = time_fn(fn, device, warmup=1 if quick else 5, iters=iters) * 1e3
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
        err = max(rel_err(o, e) for o, e in zip(_as_tuple(out), _as_tuple(expect)))
        ms = time_fn(fn, device, warmup=1 if quick else 5, iters=iters) * 1e3
        row = dict(op=op, shape=str(shape), dtype=str(dtype)[6:], impl=f"ours:{name}", ms=ms,
                   **{"GB/s": nbytes / ms / 1e6}, rel_err=err, ok=err <= threshold(dtype),
                   vs_peer=(best_peer / ms) if best_peer else None)
        if copy:
            row["copy_GB/s"] = copy / 1e9
            row["frac_of_copy"] = nbytes / (ms / 1e3) / copy
        rows.append(row)
    return rows


def _as_tuple(x):
    return x if isinstance(x, (tuple, list)) else (x,)


def run(device: torch.device, quick: bool) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    compiled_gr = torch.compile(ref.gated_residual)
    for B, T, N, D in QUICK_SHAPES if quick else FULL_SHAPES:
        shape = (B, T * N, D)
        x = torch.randn(shape, dtype=dtype, device=device)
        y = torch.randn_like(x)
        gate = torch.randn(B, T, D, dtype=dtype, device=device)
        nbytes = 3 * x.numel() * x.element_size()
        expect = ref.gated_residual(x, y, gate)
        ours = {b: (lambda b=b: ck.gated_residual(x, y, gate, backend=b)) for b in ours_backends("gated_residual", device)}
        peers = {"torch-eager": lambda: ref.gated_residual(x, y, gate),
                 "torch.compile": lambda: compiled_gr(x, y, gate)}
        rows += bandwidth_rows("gated_residual", shape, dtype, nbytes, ours, peers, expect, device, quick)
    return rows
