"""Backend choice for every op of the library.

Backends:
  "triton"  Triton kernels (cosmos_kernels/triton/). CUDA tensors; CPU tensors only through the
            Triton interpreter (TRITON_INTERPRET=1, which the tests set).
  "cuda"    the CUDA C++ kernels of csrc/ (cosmos_kernels._C). On CPU tensors this runs the host
            build of the same per-row source, which is how CI tests that source without a GPU.
  "torch"   the plain-PyTorch reference (cosmos_kernels/reference/): the spec.

Default: on CUDA tensors "cuda" for ops registered with `prefer_cuda=True` (where it measured
faster) when _C has CUDA, else "triton"; on CPU tensors "torch". COSMOS_KERNELS_BACKEND overrides
the default process-wide; a per-call `backend=` overrides both. A backend that is asked for and
cannot run raises BackendUnavailable: never a silent fallback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cosmos_kernels import _ext

BACKENDS = ("triton", "cuda", "torch")
ENV_VAR = "COSMOS_KERNELS_BACKEND"


class BackendUnavailable(RuntimeError):
    """A backend was requested that cannot run this op on this tensor."""


@dataclass(frozen=True)
class OpInfo:
    name: str
    backends: tuple[str, ...]
    prefer_cuda: bool = False


_OPS: dict[str, OpInfo] = {}


def register_op(name: str, backends=BACKENDS, prefer_cuda: bool = False) -> OpInfo:
    """Declare an op and the backends it implements (called once by its module)."""
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"register_op({name!r}): unknown backend {b!r}; expected one of {BACKENDS}")
    info = OpInfo(name, tuple(backends), prefer_cuda)
    _OPS[name] = info
    return info


def _load_families() -> None:
    # each family module registers its ops on import; public names are imported lazily
    import cosmos_kernels

    cosmos_kernels._load_all()


def registered_ops() -> dict[str, OpInfo]:
    _load_families()
    return dict(_OPS)


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str:
    """Empty string when `backend` can run on `device`, else why not."""
    if backend == "torch":
        return ""
    if backend == "triton":
        if device.type == "cuda":
            return ""
        if device.type == "cpu" and triton_interpreting():
            return ""
        return (f"Triton kernels need CUDA tensors (got device {device}); "
                "set TRITON_INTERPRET=1 before importing cosmos_kernels to run them on the CPU")
    if backend == "cuda":
        if device.type not in ("cpu", "cuda"):
            return f"the cuda backend runs on cuda (or, host build, cpu) tensors, not {device}"
        return _ext.unavailable_reason(device)
    return f"unknown backend {backend!r}"


def _default(info: OpInfo, device: torch.device) -> str:
    if device.type == "cuda":
        if info.prefer_cuda and "cuda" in info.backends and not _ext.unavailable_reason(device):
            return "cuda"
        if "triton" in info.backends:
            return "triton"
        return "cuda" if "cuda" in info.backends else "torch"
    return "torch"


def backend_for(op: str, tensor: torch.Tensor, backend: str | None = None) -> str:
    """The backend that `op` runs on for `tensor` (with an optional per-call override).

    Raises ValueError for an unknown op or backend name, BackendUnavailable for a backend that
    was asked for (per call or through COSMOS_KERNELS_BACKEND) and cannot run here.
    """
    info = _OPS.get(op)
    if info is None:
        _load_families()
        info = _OPS.get(op)
    if info is None:
        raise ValueError(f"backend_for: unknown op {op!r}; known ops: {sorted(_OPS)}")
    requested, source = backend, "backend="
    if requested is None:
        requested, source = os.environ.get(ENV_VAR) or None, ENV_VAR
    if requested is None:
        return _default(info, tensor.device)
    if requested not in BACKENDS:
        raise ValueError(f"{source}{requested!r} for {op}: unknown backend; expected one of {BACKENDS}")
    if requested not in info.backends:
        raise BackendUnavailable(
            f"{op} has no {requested!r} backend ({source}{requested!r}); it implements {info.backends}")
    why = unavailable_reason(requested, tensor.device)
    if why:
        raise BackendUnavailable(f"{op}: backend {requested!r} requested via {source} is unavailable: {why}")
    return requested
