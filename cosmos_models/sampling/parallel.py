"""Sampling on several processes: `torchrun --nproc-per-node N -m cosmos_models.cli sample ...`.

Two ways to use N GPUs (`--parallel`):

- "context" (the default under torchrun): every video is sampled by all N ranks together with Ulysses
  context parallelism (`DiT.set_context_parallel_group`): each rank holds T/N latent frames of the
  sequence, self-attention exchanges heads by all-to-all, the network's output is gathered, so every
  rank runs the same solver on the same latents (same seed, same noise) and rank 0 writes the video.
  The latent frames of a chunk (per view) must divide by N, the heads too. Memory per GPU: the
  weights plus 1/N of the activations; for one long 720p video this is what makes it fit and fast.
- "batch": the entries of a --spec are dealt out round-robin, rank r sampling entries r, r + N, ...
  on its own GPU with a whole copy of the model; the best throughput for many short videos.

The process group is NCCL on GPUs and gloo on CPUs (the tests run 2 CPU processes), from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Without it everything is one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cosmos_models.devices import resolve_device

PARALLEL = ("context", "batch")


@dataclass
class SampleGroup:
    world: int
    rank: int
    mode: str            # "context" | "batch" | "single"
    device: torch.device
    owns: bool           # we started the process group (and end it in close())

    @property
    def writes(self) -> bool:
        """Whether this rank writes the video of a job it runs (context parallel: rank 0 only)."""
        return self.mode != "context" or self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether this rank samples job `index` (batch mode deals the jobs out; otherwise all ranks)."""
        return self.mode != "batch" or index % self.world == self.rank

    def context_parallel(self, model) -> None:
        if self.mode == "context":
            model.set_context_parallel_group(dist.group.WORLD)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def total(self, count: int) -> int:
        """Sum of an integer over the ranks (e.g. the failed jobs of batch mode)."""
        if self.world == 1:
            return count
        t = torch.tensor([count], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return int(t.item())

    def close(self) -> None:
        if self.owns and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str | None, parallel: str | None, timeout_s: float = 1800.0) -> SampleGroup:
    """This process's place in the sampling group (a world of one without torchrun)."""
    if parallel is not None and parallel not in PARALLEL:
        raise ValueError(f"--parallel {parallel!r}: expected one of {PARALLEL}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        return SampleGroup(1, 0, "single", dev, False)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return SampleGroup(dist.get_world_size(), dist.get_rank(), parallel or "context", dev, owns)
