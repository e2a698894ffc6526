"""Shared by the test modules: which backends can run here, and dtype lists."""
import torch

from cosmos_kernels import dispatch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def runnable_backends(op: str, device: str = "cpu") -> list[str]:
    """Backends of `op` that can run on `device` in this process (the reference always can)."""
    info = dispatch.registered_ops()[op]
    dev = torch.device(device)
    return [b for b in info.backends if not dispatch.unavailable_reason(b, dev)]
