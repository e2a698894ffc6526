"""Process layout of a training run: the process group, the FSDP2 mesh, the context-parallel group.

The world (torchrun's processes, or one process without torchrun) is a 3-D grid of ranks
(replicate R, shard S, cp C), rank = (r·S + s)·C + c:

- cp: the C ranks of a context-parallel group hold consecutive ranks. They get the same video batch
  and split its sequence (Ulysses, see cosmos_models/nets/dit.py), so each computes only a part of every
  parameter's gradient; the group's parts sum to the full gradient.
- data parallel: the R·S groups get different batches; dp_rank = rank // C.
- FSDP2 shards parameters, gradients and optimizer state over all S·C ranks of a replica (mesh
  dim "shard") and, with --hsdp-replicate R > 1, replicates over R (hybrid sharding: a 2-D mesh
  (replicate, shard); gradients are reduce-scattered inside a replica, then all-reduced across).

Why FSDP over shard × cp, not FSDP over the data-parallel ranks plus a separate all-reduce over cp:
the reduce-scatter over all S·C ranks sums the cp ranks' partial gradients in the same collective
that averages over data parallelism (one collective instead of two), and parameters and optimizer
state are sharded C times finer. FSDP divides the sum by the mesh size (R·S·C) while the correct
gradient is the sum over cp divided by R·S, so the trainer scales the loss it back-propagates by C
on video batches (cosmos_models/training/trainer.py; image batches, which run without CP, are scaled so the
same division gives the data-parallel mean too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from cosmos_models.devices import resolve_device


@dataclass
class Layout:
    world: int
    rank: int
    cp: int
    replicate: int
    device: torch.device
    backend: str
    fsdp_mesh: DeviceMesh
    cp_group: object | None          # None when cp == 1
    owns_process_group: bool         # this run initialized it (and destroys it in close())

    @property
    def shard(self) -> int:
        return self.world // (self.replicate * self.cp)

    @property
    def dp_size(self) -> int:
        return self.world // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp

    @property
    def cp_source(self) -> int:
        """Global rank of cp rank 0 of this rank's group (the one that broadcasts online-encoded latents)."""
        return self.rank - self.cp_rank

    def describe(self) -> str:
        return (f"world {self.world} = replicate {self.replicate} x shard {self.shard} x cp {self.cp} "
                f"({self.backend}, {self.device})")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def init(device: str | None = None, cp: int = 1, replicate: int = 1, timeout_s: float = 600.0) -> Layout:
    """Join (or start) the process group and build the meshes. Under torchrun the environment says
    who we are; without it this process is a world of one (an in-memory store, no ports)."""
    _check_positive("cp", cp)
    _check_positive("hsdp_replicate", replicate)
    dev = resolve_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        owns = True
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % (replicate * cp):
        if owns:
            dist.destroy_process_group()
        raise ValueError(f"{world} processes cannot be laid out as hsdp_replicate {replicate} x shard x cp {cp}: "
                         f"{replicate * cp} does not divide {world}")
    shard = world // (replicate * cp)
    dev_type = dev.type
    if replicate > 1:
        fsdp_mesh = init_device_mesh(dev_type, (replicate, shard * cp), mesh_dim_names=("replicate", "shard"))
    else:
        fsdp_mesh = init_device_mesh(dev_type, (shard * cp,), mesh_dim_names=("shard",))
    cp_group = None
    if cp > 1:
        # the cp ranks of a group are consecutive; every rank creates every group, in the same order
        # (public dist.new_group rather than the mesh's private _unflatten, whose spelling changes)
        for start in range(0, world, cp):
            group = dist.new_group(list(range(start, start + cp)))
            if start <= rank < start + cp:
                cp_group = group
    return Layout(world, rank, cp, replicate, dev, backend, fsdp_mesh, cp_group, owns)


def close(layout: Layout, *, barrier: bool = False) -> None:
    """Destroy the process group this run made. `barrier=True` (a run that finished normally) first
    waits for every rank, so no rank tears gloo down while a peer is still in its last collective
    (seen as a rank aborting at exit under load). After an error no barrier: a dead peer would hang it."""
    if layout.owns_process_group and dist.is_initialized():
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


_JVP_THROUGH_FSDP: dict = {}


def jvp_through_fsdp_supported(layout: Layout) -> bool:
    """Whether `torch.func.jvp` runs through FSDP2's hooks with this torch (it does from torch 2.13 on;
    torch 2.11 stops in FSDP's unshard with "Cannot access storage of TensorWrapper"). A feature
    probe, not a version check: one tiny fully_shard module on the run's mesh, once per process
    (a collective: every rank calls it at the same point)."""
    key = (id(layout.fsdp_mesh), layout.device.type)
    if key not in _JVP_THROUGH_FSDP:
        from torch.distributed.fsdp import fully_shard

        probe = nn.Linear(2, 2, bias=False, device=layout.device)
        fully_shard(probe, mesh=layout.fsdp_mesh)
        x = torch.ones(1, 2, device=layout.device)
        try:
            torch.func.jvp(probe, (x,), (x,))
            _JVP_THROUGH_FSDP[key] = True
        except (NotImplementedError, RuntimeError):
            _JVP_THROUGH_FSDP[key] = False
    return _JVP_THROUGH_FSDP[key]


def shard_model(model: nn.Module, layout: Layout, param_dtype: torch.dtype | None) -> nn.Module:
    """FSDP2: `fully_shard` every DiT block, then the root. param_dtype (e.g. bf16) is the compute
    copy of the fp32 master weights; gradients are reduced in fp32. Inputs are not cast by FSDP
    (cast_forward_inputs=False): the DiT keeps its timestep embedding, AdaLN modulation and RoPE
    angles in fp32 and casts the tokens itself."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    from cosmos_models.nets.dit import Block

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        fully_shard(block, mesh=layout.fsdp_mesh, mp_policy=policy)
    fully_shard(model, mesh=layout.fsdp_mesh, mp_policy=policy)
    if layout.backend == "gloo":
        # gloo has no AVG reduction: sum, then divide by the mesh size afterwards
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
    return model
