"""Initializing a model that is already sharded, one module at a time (TorchTitan's meta-device
pattern, with the single-process initial weights kept bit for bit).

The usual build allocates every fp32 weight on every GPU before FSDP2 shards them: ~56 GB for the
14B DiT, so an 80 GB GPU cannot start a 14B run. Here the model is built on the meta device and
sharded there (FSDP2 and SAC take meta modules), `to_empty` allocates only each rank's shards, and
the weights are then initialized by running the model's own `reset_parameters` on an unsharded
meta *shadow* whose submodules are materialized one at a time, just before their
`reset_parameters` runs: that submodule's full weights exist on the device for the time of its
init (one DiT block: ~1.5 GB for 14B), each rank copies its shard out, and the submodule goes back
to meta. The random-number stream is consumed in exactly the order `cm.build` consumes it, so
the weights are the ones `cm.build(cfg, device)` would have made with the same seed.

Loading (`load`: --init, the distiller's teacher weights) is the same without the shadow: each rank
copies its piece of every full tensor of a state dict (on the CPU) into its allocated shards, so
the device never holds more than the shards.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn


def dtensor_shard(target: Tensor, full: Tensor) -> tuple[Tensor, Tensor]:
    """(the local tensor of `target`, the piece of `full` it holds): per mesh dimension, Shard(d)
    takes this rank's torch.chunk along d (FSDP2's layout: the last ranks possibly empty) and
    Replicate keeps all; a plain tensor holds all of `full`."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(target, DTensor):
        return target, full
    mesh, part = target.device_mesh, full
    for i, placement in enumerate(target.placements):
        if isinstance(placement, Shard):
            chunks = part.chunk(mesh.size(i), dim=placement.dim)
            rank = mesh.get_local_rank(i)
            part = chunks[rank] if rank < len(chunks) else part.narrow(placement.dim, 0, 0)
        elif not isinstance(placement, Replicate):
            raise ValueError(f"sharded init: placement {placement} of {tuple(target.placements)} is not "
                             "Shard or Replicate")
    return target.to_local(), part


def _local(p: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor

    return p.to_local() if isinstance(p, DTensor) else p


def load(model: nn.Module, state_dict: Mapping[str, Tensor], *, key: Callable[[str], str] = lambda name: name,
         skip: Callable[[str], bool] = lambda name: False,
         piece: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = dtensor_shard) -> None:
    """Copy this rank's piece of every full tensor of `state_dict` into `model`'s (sharded,
    allocated) parameters, cast to their dtype. Parameter `name` reads state_dict[key(name)];
    parameters with skip(name) are left alone (e.g. LoRA adapters, initialized apart). Strict: a
    parameter without its entry, an entry no parameter reads, or a shape that differs is an error."""
    targets = {name: p for name, p in model.named_parameters() if not skip(name)}
    wanted = {key(name): name for name in targets}
    missing = sorted(k for k in wanted if k not in state_dict)
    unused = sorted(set(state_dict) - set(wanted))
    if missing or unused:
        raise RuntimeError(f"sharded load: {len(missing)} parameter(s) without an entry {missing[:5]}, "
                           f"{len(unused)} entr(ies) no parameter reads {unused[:5]}")
    with torch.no_grad():
        for k, name in wanted.items():
            full = state_dict[k]
            local, part = piece(targets[name], full)
            if local.shape != part.shape:
                raise RuntimeError(f"sharded load: {name}: entry {k} of shape {tuple(full.shape)} gives this rank "
                                   f"{tuple(part.shape)}, its shard is {tuple(local.shape)}")
            local.copy_(part)


def initialize(model: nn.Module, shadow: nn.Module, device: torch.device | str, *,
               skip: Callable[[str], bool] = lambda name: False,
               piece: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = dtensor_shard) -> None:
    """Fill `model`'s (sharded, allocated) parameters with the weights `shadow.reset_parameters()`
    draws. `shadow`: the same network on the meta device, unsharded (same parameter names).
    Parameters with skip(name) are neither written nor checked (e.g. LoRA adapters, whose init
    is their own). `piece(target, full) -> (local, part)`: where `full` goes in `target` (default:
    FSDP2 shards). Seed the random generator before calling, as before `cm.build`."""
    device = torch.device(device)
    targets = {name: p for name, p in model.named_parameters() if not skip(name)}
    names = {m: name for name, m in shadow.named_modules()}
    written: set[str] = set()
    active = [False]

    def stream(module: nn.Module, reset: Callable) -> Callable:
        def run(*args, **kwargs):
            if active[0]:  # inside an outer unit already materialized
                return reset(*args, **kwargs)
            active[0] = True
            try:
                module.to_empty(device=device)
                with torch.no_grad():
                    for p in module.parameters():
                        p.fill_(float("nan"))
                    reset(*args, **kwargs)
                    prefix = names[module]
                    for name, full in module.named_parameters(prefix=prefix):
                        if skip(name):
                            continue
                        local, part = piece(targets[name], full)
                        if local.shape != part.shape:
                            raise RuntimeError(f"sharded init: {name}: local shard {tuple(local.shape)} "
                                               f"!= its piece {tuple(part.shape)} of {tuple(full.shape)}")
                        local.copy_(part)
                        written.add(name)
            finally:
                module.to_empty(device="meta")
                active[0] = False
        return run

    for module in names:
        if module is not shadow and hasattr(module, "reset_parameters"):
            module.reset_parameters = stream(module, module.reset_parameters)
    try:
        shadow.reset_parameters()
    finally:
        for module in names:
            vars(module).pop("reset_parameters", None)
    missed = sorted(set(targets) - written)
    if missed:
        raise RuntimeError(f"sharded init: reset_parameters of {type(shadow).__name__} initialized no "
                           f"submodule holding {missed[:5]}{' ...' if len(missed) > 5 else ''}")
    with torch.no_grad():
        bad = [n for n, p in targets.items() if not bool(torch.isfinite(_local(p)).all())]
    if bad:
        raise RuntimeError(f"sharded init: parameters left uninitialized: {bad[:5]}")
