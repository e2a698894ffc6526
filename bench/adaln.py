"""AdaLN family benchmark: time, bytes moved, GB/s against a device copy measured in the same run,
and against torch eager and torch.compile of the reference (the peers a user would pick).

Each op is timed forward ("fwd") and forward + backward ("fwd+bwd", gradients of every input
from fixed output gradients). Bytes moved count the token tensors each pass must read and write
once (the modulation rows and the per-row statistics are small and not counted):

    gated_residual        fwd 3 (x, y -> out)            fwd+bwd 3 + 3 (grad, y -> dy)
    adaln_modulate        fwd 2 (x -> h)                  fwd+bwd 2 + 3 (dh, x -> dx)
    gated_residual_adaln  fwd 4 (x, y -> x_new, h)        fwd+bwd 4 + 6 (dx_new, dh, x_new, y -> dx, dy)
"""
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

# op -> (number of token inputs, number of modulation inputs, token tensors moved fwd, fwd+bwd)
OPS = {
    "gated_residual": (2, 1, 3, 6),
    "adaln_modulate": (1, 2, 2, 5),
    "gated_residual_adaln": (2, 3, 4, 10),
}


def ours_backends(op: str, device: torch.device) -> list[str]:
    """Our backends that can run here; "torch" is the custom op over the reference (its dispatch
    overhead shows against the plain "torch-eager" peer)."""
    info = dispatch.registered_ops()[op]
    return [b for b in info.backends if not dispatch.unavailable_reason(b, device)]


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
        err = max(rel_err(o, e) for o, e in zip(_as_tuple(out), _as_tuple(expect)))
        ms = time_fn(fn, device, warmup=2 if quick else 5, iters=iters) * 1e3
        row = dict(op=op, shape=str(shape), dtype=str(dtype)[6:], impl=f"ours:{name}", ms=ms,
                   **{"GB/s": nbytes / ms / 1e6}, rel_err=err, ok=err <= threshold(dtype, grad=grad),
                   vs_peer=(best_peer / ms) if best_peer else None)
        if copy:
            row["copy_GB/s"] = copy / 1e9
            row["frac_of_copy"] = nbytes / (ms / 1e3) / copy
        rows.append(row)
    return rows


def _as_tuple(x):
    return x if isinstance(x, (tuple, list)) else (x,)


def _fwd_bwd(fn, inputs, grads):
    """A callable running fn forward and then the gradients of every input."""
    def run():
        outs = _as_tuple(fn(*inputs))
        return torch.autograd.grad(outs, inputs, grads[:len(outs)])
    return run


def _op_rows(op, shape, dtype, mdtype, device, quick) -> list[dict]:
    B, T, N, D = shape
    n_tok, n_mod, moved_fwd, moved_bwd = OPS[op]
    tokens = [torch.randn(B, T * N, D, dtype=dtype, device=device) for _ in range(n_tok)]
    mods = [0.5 * torch.randn(B, T, D, dtype=mdtype, device=device) for _ in range(n_mod)]
    inputs = tokens + mods
    token_bytes = tokens[0].numel() * tokens[0].element_size()
    reference = getattr(ref, op)
    compiled = torch.compile(reference)
    backends = ours_backends(op, device)
    ours = {b: (lambda b=b: getattr(ck, op)(*inputs, backend=b)) for b in backends}
    peers = {"torch-eager": lambda: reference(*inputs), "torch.compile": lambda: compiled(*inputs)}
    label = (B, T * N, D)
    rows = bandwidth_rows(f"{op} fwd", label, dtype, moved_fwd * token_bytes, ours, peers,
                          reference(*inputs), device, quick)

    leaves = [t.clone().requires_grad_() for t in inputs]
    grads = [torch.randn_like(tokens[0]) for _ in range(2)]
    expect = _fwd_bwd(reference, [t.detach().float().requires_grad_() for t in leaves], [g.float() for g in grads])()
    ours = {b: _fwd_bwd(lambda *a, b=b: getattr(ck, op)(*a, backend=b), leaves, grads) for b in backends}
    peers = {"torch-eager": _fwd_bwd(reference, leaves, grads), "torch.compile": _fwd_bwd(compiled, leaves, grads)}
    rows += bandwidth_rows(f"{op} fwd+bwd", label, dtype, moved_bwd * token_bytes, ours, peers,
                           expect, device, quick, grad=True)
    return rows


def run(device: torch.device, quick: bool) -> list[dict]:
    # on the GPU: bf16 tokens with fp32 modulation, the official "use_wan_fp32_strategy"
    dtype, mdtype = (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32, torch.float32)
    rows = []
    for shape in QUICK_SHAPES if quick else FULL_SHAPES:
        for op in OPS:
            rows += _op_rows(op, shape, dtype, mdtype, device, quick)
    return rows
