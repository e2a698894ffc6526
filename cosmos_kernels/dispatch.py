"""Backend choice for every op of the library: one table, one override spelling.

Backends:
  "triton"  Triton kernels (cosmos_kernels/triton/). CUDA tensors; CPU tensors only through the
            Triton interpreter (TRITON_INTERPRET=1, which the tests set).
  "cuda"    the CUDA C++ kernels of csrc/ (cosmos_kernels._C). On CPU tensors this runs the host
            build of the same per-row source, which is how CI tests that source without a GPU.
  "torch"   the plain-PyTorch reference (cosmos_kernels/reference/): the spec.

`OPS` below is THE table of which op implements which backends (a family module adds its ops here
when it is written; tests/test_dispatch.py checks the table against the registered custom ops).

Default: on CUDA tensors "cuda" for ops marked `prefer_cuda` (where it measured faster) when _C has
CUDA, else "triton"; on CPU tensors "torch".

Overrides, strongest first:
  1. `backend=` on the call (every public op takes it);
  2. `with cosmos_kernels.use_backend(SPEC):` (what `--kernel-backend SPEC` of every command does);
  3. the environment variable COSMOS_KERNELS_BACKEND=SPEC.
SPEC is one spelling for both: a backend for every op ("triton"), per-op choices
("flash_attention=torch,adaln_modulate=cuda"), or both ("triton,flash_attention=torch": the bare name
is the default, the op=backend entries override it for those ops). The use_backend override is
process-wide (not per thread), so the backward and the activation-checkpointing recomputation,
which autograd may run on its own threads, choose what the forward chose.

A backend that is asked for and cannot run raises BackendUnavailable: never a silent fallback.
`backend_table(device)` (printed by `cosmos selfcheck`) lists every op, its backends, and what runs here.
"""
from __future__ import annotations

import contextlib
import os
import threading
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
    family: str                    # the module cosmos_kernels.<family> that defines the op
    backends: tuple[str, ...]      # implemented backends
    prefer_cuda: bool = False      # "cuda" is the default on CUDA tensors (only with a measurement showing it faster)


def _ops(*entries: OpInfo) -> dict[str, OpInfo]:
    return {e.name: e for e in entries}


_ALL = ("triton", "cuda", "torch")
OPS: dict[str, OpInfo] = _ops(
    OpInfo("adaln_modulate", "adaln", _ALL),
    OpInfo("gated_residual", "adaln", _ALL),
    OpInfo("gated_residual_adaln", "adaln", _ALL),
    OpInfo("apply_rope3d", "rope", _ALL),
    OpInfo("qk_norm_rope", "rope", _ALL),
    OpInfo("flash_attention", "flash_attention", ("triton", "torch")),
    OpInfo("flash_attention_jvp", "flash_attention", ("triton", "torch")),
    OpInfo("neighborhood_attention_3d", "neighborhood_attention", ("triton", "torch")),
    OpInfo("ulysses_all_to_all", "ulysses", ("triton", "torch")),
)


def registered_ops() -> dict[str, OpInfo]:
    return dict(OPS)


# ---------------------------------------------------------------------------------------------
# the override: SPEC strings, the context manager, the environment variable
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Override:
    default: str | None
    per_op: tuple[tuple[str, str], ...]
    source: str

    def backend(self, op: str) -> str | None:
        return dict(self.per_op).get(op, self.default)


def parse_spec(spec: str, source: str = "backend spec") -> Override:
    """"triton" | "flash_attention=torch,adaln_modulate=cuda" | "triton,flash_attention=torch"."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{source}: expected a backend spec such as 'triton' or 'flash_attention=torch', "
                         f"got {spec!r}")
    default, per_op = None, {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        op, sep, backend = item.partition("=")
        op, backend = (op.strip(), backend.strip()) if sep else (None, op.strip())
        if backend not in BACKENDS:
            raise ValueError(f"{source}: unknown backend {backend!r} in {spec!r}; expected one of {BACKENDS}")
        if op is None:
            if default is not None:
                raise ValueError(f"{source}: {spec!r} names two default backends ({default!r}, {backend!r})")
            default = backend
        elif op not in OPS:
            raise ValueError(f"{source}: unknown op {op!r} in {spec!r}; known ops: {sorted(OPS)}")
        else:
            per_op[op] = backend
    return Override(default, tuple(sorted(per_op.items())), source)


_LOCK = threading.Lock()
_STACK: list[Override] = []


@contextlib.contextmanager
def use_backend(spec: str | None = None, **per_op: str):
    """Run the ops inside on the backends of `spec` (and/or op=backend keywords), process-wide.
    `use_backend(None)` changes nothing (a command without --kernel-backend)."""
    if spec is None and not per_op:
        yield
        return
    parts = [spec] if spec else []
    parts += [f"{op}={backend}" for op, backend in per_op.items()]
    override = parse_spec(",".join(parts), f"use_backend({', '.join(map(repr, parts))})")
    with _LOCK:
        _STACK.append(override)
    try:
        yield override
    finally:
        with _LOCK:
            _STACK.remove(override)


def _env_override() -> Override | None:
    spec = os.environ.get(ENV_VAR)
    return parse_spec(spec, ENV_VAR) if spec else None


def active_overrides() -> list[Override]:
    """The overrides in force, strongest first (innermost use_backend, ..., the environment)."""
    stack = list(reversed(_STACK))  # a copy of the list: atomic under the GIL, no lock needed to read
    env = _env_override()
    return stack + ([env] if env is not None else [])


@torch.compiler.assume_constant_result
def _override_for(op: str) -> tuple[str, str] | tuple[()]:
    """(backend, source) of the strongest override naming `op` or all ops, () when none does. A
    constant under torch.compile: the choice is made when the graph is traced, as for a default."""
    for override in active_overrides():
        chosen = override.backend(op)
        if chosen is not None:
            return chosen, f"{override.source}: "
    return ()


# ---------------------------------------------------------------------------------------------
# choosing
# ---------------------------------------------------------------------------------------------
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


def _op_info(op: str) -> OpInfo:
    info = OPS.get(op)
    if info is None:
        raise ValueError(f"backend_for: unknown op {op!r}; known ops: {sorted(OPS)}")
    return info


def backend_for(op: str, tensor: torch.Tensor, backend: str | None = None) -> str:
    """The backend that `op` runs on for `tensor` (with an optional per-call override).

    Raises ValueError for an unknown op or backend name, BackendUnavailable for a backend that
    was asked for (per call, by use_backend or through COSMOS_KERNELS_BACKEND) and cannot run here.
    """
    info = _op_info(op)
    requested, source = backend, "backend="
    if requested is None:
        found = _override_for(op)
        if found:
            requested, source = found
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


def backend_table(device: torch.device | str = "cpu") -> list[dict]:
    """One row per op: its backends, which of them can run on `device`, and what runs there now
    (the default, or the override in force)."""
    device = torch.device(device)
    probe = torch.empty(0, device=device)
    rows = []
    for name, info in OPS.items():
        runnable = [b for b in info.backends if not unavailable_reason(b, device)]
        try:
            chosen = backend_for(name, probe)
        except (BackendUnavailable, ValueError) as exc:
            chosen = f"error: {exc}"
        rows.append({"op": name, "family": info.family, "backends": ",".join(info.backends),
                     f"runnable on {device.type}": ",".join(runnable), "runs": chosen,
                     "prefer_cuda": info.prefer_cuda})
    return rows
