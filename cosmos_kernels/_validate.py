"""Input checks at the Python boundary. Every message names the argument, what was received and
what is supported, so a user never meets a Triton crash or a silently wrong result."""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton/CUDA kernels take


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name: str, t, *, ndim: int | Sequence[int] | None = None,
                 dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, op: str = "") -> torch.Tensor:
    """`t` is a tensor of one of `dtypes` with `ndim` dimensions (an int or a set of ints)."""
    where = f"{op}: " if op else ""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{where}{name} has dtype {t.dtype}; supported: {_names(dtypes)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{where}{name} must have {' or '.join(map(str, allowed))} dimensions, "
                             f"got shape {tuple(t.shape)}")
    return t


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    dev = items[0][1].device
    for n, t in items[1:]:
        if t.device != dev:
            raise ValueError(f"{op}: {n} is on {t.device} but {items[0][0]} is on {dev}; "
                             "all inputs must be on one device")


def check_same_dtype(op: str, **tensors: torch.Tensor) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    dt = items[0][1].dtype
    for n, t in items[1:]:
        if t.dtype != dt:
            raise TypeError(f"{op}: {n} has dtype {t.dtype} but {items[0][0]} has {dt}; "
                            "they must match")


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int | None]) -> None:
    """`None` in `expected` matches any size."""
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {want}")


def check_last_dim_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must be contiguous in its last dimension "
                         f"(stride(-1) == 1), got strides {tuple(t.stride())}; call .contiguous()")


def check_choice(op: str, name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{op}: {name}={value!r} is not supported; expected one of {tuple(choices)}")


def check_positive(op: str, name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value!r}")


def check_real(op: str, name: str, value, *, positive: bool = False) -> float:
    """A finite real Python number (not a bool, not a tensor), > 0 with `positive`; as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{op}: {name} must be a real number (finite), got {value!r}")
    if positive:
        check_positive(op, name, value)
    return float(value)


def check_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
    return value


def check_backend_dtype(op: str, backend: str, t: torch.Tensor) -> None:
    """float64 runs on the reference only (used for float64 JVP/gradient checks of whole models)."""
    if backend != "torch" and t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: dtype {t.dtype} is supported only by backend 'torch'; "
                        f"backend {backend!r} supports {_names(KERNEL_DTYPES)}")
