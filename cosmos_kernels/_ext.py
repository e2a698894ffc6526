"""Loader of the compiled extension `cosmos_kernels._C` and the raw-pointer calling convention.

`_C` takes tensors as (data pointer, dtype code) and sizes as ints, so it links against no
PyTorch ABI and builds in seconds; the Python op validates shapes/strides before calling it.
"""
from __future__ import annotations

import torch

try:
    from cosmos_kernels import _C  # type: ignore[attr-defined]

    IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pure-Python install (no compiler), or not built yet
    _C = None
    IMPORT_ERROR = exc

# Must match csrc/common.h `ck::DType`.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def host_available() -> bool:
    return _C is not None


def cuda_available() -> bool:
    return _C is not None and bool(_C.has_cuda()) and torch.cuda.is_available()


def unavailable_reason(device: torch.device) -> str:
    if _C is None:
        return f"cosmos_kernels._C is not built ({IMPORT_ERROR}); reinstall with a C++ compiler and CMake"
    if device.type == "cuda" and not _C.has_cuda():
        return "cosmos_kernels._C was built without CUDA (nvcc was not found at install time)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    return ""


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def stream_of(t: torch.Tensor) -> int:
    """The raw cudaStream_t of the current stream on t's device (0 for CPU tensors)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0
