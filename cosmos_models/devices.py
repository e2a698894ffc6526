"""The device a command runs on, one rule for training and sampling: the one named (default: cuda
when available), validated, a bare "cuda" meaning this process's GPU (LOCAL_RANK under torchrun), made
current."""
from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"--device {device!r}: expected cpu or cuda")
    return dev
