"""The custom-op pattern every kernel family follows.

A family module defines its forward as a `torch.library.custom_op` (namespace `cosmos_kernels`,
with a fake implementation and a trailing `backend: str` argument resolved by dispatch), plus
custom ops for its backward (and JVP) kernels. `differentiable()` then wires them up:

- `op.register_autograd(backward, setup_context=...)`: reverse mode on the op itself, which is
  what torch.compile (fullgraph) traces and what `torch.library.opcheck` checks.
- a `torch.autograd.Function` with the same backward and a `jvp` staticmethod: forward mode for
  `torch.func.jvp` / `torch.autograd.forward_ad` (custom ops have no forward-AD registration, and
  Dynamo cannot trace a custom jvp, so the Function is used in eager mode only).

The returned callable picks the op under `torch.compile` and the Function in eager mode.
`setup_context(ctx, inputs, output)` must save what backward needs with `ctx.save_for_backward`
and keep any non-tensor state as ctx attributes; for forward mode the primal inputs are kept
(`ctx.saved_tensors` holds them inside `jvp`, in input order, tensors only), followed by the
op's output tensors when `jvp_saves_outputs=True` (a JVP rule that reuses forward results).
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def differentiable(op, setup_context: Callable, backward: Callable, jvp: Callable | None = None,
                   name: str | None = None, jvp_saves_outputs: bool = False) -> Callable:
    op.register_autograd(backward, setup_context=setup_context)

    def _setup(ctx, inputs, output):
        setup_context(ctx, inputs, output)
        saved = [t for t in inputs if isinstance(t, torch.Tensor)]
        if jvp_saves_outputs:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            saved += [t for t in outputs if isinstance(t, torch.Tensor)]
        ctx.save_for_forward(*saved)

    def _no_jvp(ctx, *tangents):
        raise RuntimeError(f"{name or op}: no forward-mode (JVP) rule is implemented for this op")

    fn = type(
        f"_{(name or 'op').title().replace('_', '')}Function",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(lambda *args: op(*args)),
            "setup_context": staticmethod(_setup),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp or _no_jvp),
        },
    )

    def apply(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return fn.apply(*args)

    apply.__name__ = name or getattr(op, "__name__", "op")
    return apply
