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
from bench.common import bandwidth_rows, forward_backward, ours_backends
from cosmos_kernels.reference import adaln as ref

# (B, T, N, D): the 2B model at 720p (24 latent frames of 44×80 tokens) and at 480p (30×52)
FULL_SHAPES = [(1, 24, 44 * 80, 2048), (1, 24, 30 * 52, 2048)]
QUICK_SHAPES = [(1, 4, 64, 256)]

# op -> (number of token inputs, number of modulation inputs, token tensors moved fwd, fwd+bwd)
OPS = {
    "gated_residual": (2, 1, 3, 6),
    "adaln_modulate": (1, 2, 2, 5),
    "gated_residual_adaln": (2, 3, 4, 10),
}


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

    grads = [torch.randn_like(tokens[0]) for _ in range(2)]
    expect = forward_backward(reference, [t.float() for t in inputs], [g.float() for g in grads])()
    ours = {b: forward_backward(lambda *a, b=b: getattr(ck, op)(*a, backend=b), inputs, grads) for b in backends}
    peers = {"torch-eager": forward_backward(reference, inputs, grads),
             "torch.compile": forward_backward(compiled, inputs, grads)}
    rows += bandwidth_rows(f"{op} fwd+bwd", label, dtype, moved_bwd * token_bytes, ours, peers,
                           expect, device, quick, grad=True)
    return rows


def run(device: torch.device, quick: bool, rows: list | None = None) -> list[dict]:
    """This family's rows, appended to `rows` (if given) as each shape finishes."""
    # on the GPU: bf16 tokens with fp32 modulation, the official "use_wan_fp32_strategy"
    dtype, mdtype = (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32, torch.float32)
    rows = [] if rows is None else rows
    for shape in QUICK_SHAPES if quick else FULL_SHAPES:
        for op in OPS:
            rows += _op_rows(op, shape, dtype, mdtype, device, quick)
    return rows
