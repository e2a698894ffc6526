"""Selective activation checkpointing (SAC) of the DiT blocks.

Each block runs under `torch.utils.checkpoint` (non-reentrant). During the forward a policy marks
which op outputs are kept for the backward; everything else is dropped and recomputed from the
block's inputs when the backward reaches the block. Element-wise and norm ops (AdaLN modulate,
gated residuals, q/k RMSNorm + RoPE, GELU) are always recomputed: they are cheap to redo and
their outputs are as large as the matmul outputs. A policy chooses among the expensive ops:

    attention outputs   torch.ops.cosmos_kernels.flash_attention / neighborhood_attention_3d
                        (output and log-sum-exp), tagged "self_attn.attention" / "cross_attn.attention"
    matmuls             tagged by the nn.Linear that runs them ("self_attn.q_proj", "mlp.layer1", ...);
                        matmuls outside any nn.Linear (the AdaLN-LoRA modulation) are "modulation"

Policies (names of the official `CheckpointMode`, expressed with layer names instead of the
official op counters, which depend on the exact op order):

    none                          no checkpointing
    full                          recompute the whole block (also: block_wise, predict2_2b_720_aggressive_v2)
    predict2_2b_720_aggressive    save the attention outputs only (the official 2B 720p run)
    predict2_2b_720               save self-attention's output, its v/output projections, the whole
                                  cross-attention's matmuls and mlp.layer1 (also: predict2_14b_720)
    predict2_14b_720_aggressive   save cross_attn.v_proj, cross_attn.output_proj and mlp.layer1
    mm_only                       save every matmul, recompute attention and element-wise ops
    linear_selfattn               save every matmul and self-attention's output

Under context parallelism the Ulysses all-to-alls inside a recomputed self-attention are run
again in the backward (the same collectives in the same order on every rank).
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

_SELF_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj")
_CROSS_LINEARS = ("cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.output_proj",
                  "cross_attn.q_img", "cross_attn.k_img", "cross_attn.v_img")
_MATMUL_TAGS = frozenset(_SELF_LINEARS + _CROSS_LINEARS + ("mlp.layer1", "mlp.layer2", "modulation"))
ATTENTION_TAGS = frozenset({"self_attn.attention", "cross_attn.attention"})
TAGS = _MATMUL_TAGS | ATTENTION_TAGS

FULL = frozenset()  # nothing saved: the whole block is recomputed
# policy name -> the tags whose outputs are saved; None: no checkpointing at all
POLICIES: dict[str, frozenset[str] | None] = {
    "none": None,
    "full": FULL,
    "block_wise": FULL,
    "predict2_2b_720_aggressive_v2": FULL,
    "predict2_2b_720_aggressive": ATTENTION_TAGS,
    "predict2_2b_720": frozenset({"self_attn.attention", "self_attn.v_proj", "self_attn.output_proj", *_CROSS_LINEARS,
                                  "mlp.layer1"}),
    "predict2_14b_720": frozenset({"self_attn.attention", "self_attn.v_proj", "self_attn.output_proj",
                                   *_CROSS_LINEARS, "mlp.layer1"}),
    "predict2_14b_720_aggressive": frozenset({"cross_attn.v_proj", "cross_attn.output_proj", "mlp.layer1"}),
    "mm_only": _MATMUL_TAGS,
    "linear_selfattn": _MATMUL_TAGS | {"self_attn.attention"},
}


def _ops(names: Iterable[str]) -> frozenset:
    """The default overloads of the named ops that exist in this build (the cosmos_kernels ones are
    registered when cosmos_kernels' families are imported, which the DiT does)."""
    found = set()
    for name in names:
        namespace, op = name.split("::")
        packet = getattr(getattr(torch.ops, namespace), op, None)
        if packet is not None:
            found.add(packet.default)
    return frozenset(found)


@functools.cache
def matmul_ops() -> frozenset:
    return _ops(("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm"))


@functools.cache
def attention_ops() -> frozenset:
    import cosmos_kernels  # noqa: F401 - registers the custom ops
    import cosmos_kernels.flash_attention  # noqa: F401
    import cosmos_kernels.neighborhood_attention  # noqa: F401
    return _ops(("cosmos_kernels::flash_attention", "cosmos_kernels::neighborhood_attention_3d"))


def check_policy(name: str) -> frozenset[str] | None:
    if name not in POLICIES:
        raise ValueError(f"activation checkpointing policy {name!r} is not supported; expected one of "
                         f"{sorted(POLICIES)}")
    return POLICIES[name]


class _Scope(threading.local):
    """Which nn.Linear / attention module of a block is running (module hooks push and pop)."""

    def __init__(self):
        self.stack: list[str] = []


_SCOPE = _Scope()


def _push(tag: str, module, args) -> None:
    _SCOPE.stack.append(tag)


def _pop(tag: str, module, args, output) -> None:
    if _SCOPE.stack and _SCOPE.stack[-1] == tag:
        _SCOPE.stack.pop()


def current_tag(is_attention: bool) -> str:
    """The tag of an op issued now: the innermost nn.Linear's name for a matmul ("modulation" when
    none), "<scope>.attention" for an attention kernel."""
    if is_attention:
        scope = next((t for t in reversed(_SCOPE.stack) if t in ("self_attn", "cross_attn")), "self_attn")
        return f"{scope}.attention"
    top = _SCOPE.stack[-1] if _SCOPE.stack else ""
    return top if top in _MATMUL_TAGS else "modulation"


def _tag_modules(block: nn.Module) -> None:
    """Forward pre/post hooks (always_call, so an exception cannot leave a stale tag) that name the
    running attention module and nn.Linear; they fire again during recomputation."""
    if getattr(block, "_sac_tagged", False):
        return
    for name, module in block.named_modules():
        if name in ("self_attn", "cross_attn") or (isinstance(module, nn.Linear) and name in _MATMUL_TAGS):
            module.register_forward_pre_hook(functools.partial(_push, name))
            module.register_forward_hook(functools.partial(_pop, name), always_call=True)
    block._sac_tagged = True


def context_fn(saved: frozenset[str]):
    """A `context_fn` for torch.utils.checkpoint that saves the outputs of the ops tagged `saved`."""
    matmuls, attention = matmul_ops(), attention_ops()

    def policy(ctx, func, *args, **kwargs):
        if func in matmuls:
            tag = current_tag(False)
        elif func in attention:
            tag = current_tag(True)
        else:
            return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if tag in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return lambda: create_selective_checkpoint_contexts(policy)


def _checkpointed_forward(forward, saved: frozenset[str], *args, **kwargs):
    # the blocks hold no random ops, so the RNG state need not be stashed and restored
    if not saved:
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False,
                      context_fn=context_fn(saved), **kwargs)


def apply(model: nn.Module, policy: str) -> int:
    """Checkpoint every DiT block of `model` (blocks and control blocks) with `policy`. Call before
    FSDP's fully_shard. The block's forward is replaced on the instance, so parameter names (and
    checkpoints) are unchanged. Returns the number of blocks wrapped (0 for "none")."""
    saved = check_policy(policy)
    if saved is None:
        return 0
    from cosmos_models.nets.dit import Block

    count = 0
    for module in model.modules():
        if isinstance(module, Block):
            if "forward" in vars(module):
                raise ValueError("sac.apply: a block is already checkpointed (apply the policy once)")
            if saved:
                _tag_modules(module)
            module.forward = functools.partial(_checkpointed_forward, module.forward, saved)
            count += 1
    return count
