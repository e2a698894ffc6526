"""Named ranges around the DiT's parts: NVTX (for Nsight Systems), torch.profiler record_function
(for a trace) and per-part timing (for the MFU breakdown), installed by module hooks inside `with`."""
from __future__ import annotations

import contextlib
import time

import torch
from torch import nn


def _in_backward() -> bool:
    """True while autograd runs a backward pass (a forward seen then is checkpoint recomputation)."""
    return torch._C._current_graph_task_id() != -1


def nvtx_available() -> bool:
    """Whether torch.cuda.nvtx works here (CUDA builds of torch; with or without a GPU)."""
    return hasattr(torch._C, "_nvtx")


class PartRanges:
    """Named ranges around the model's parts, installed by module hooks inside `with` only (no cost
    otherwise): patch_embed; blockN.self_attn / .cross_attn / .mlp; controlN (Transfer control
    blocks) and control_embed; final_layer; each forward, backward (".bwd") and checkpoint
    recomputation (".recompute"). `range(name)` marks other pieces of a step (loss, optimizer).

    nvtx: NVTX ranges named "cosmos/<part>" (torch.cuda.nvtx) so an Nsight Systems trace reads by name; profiler:
    torch.profiler record_function ranges (for --trace); timing: per-part times (CUDA events, or
    perf_counter on a CPU), summed by `times()` per (category, phase).
    """

    def __init__(self, model: nn.Module, *, nvtx: bool = False, profiler: bool = False, timing: bool = False,
                 device: torch.device | None = None):
        self.model, self.use_nvtx, self.use_profiler, self.timing = model, nvtx, profiler, timing
        self.device = device if device is not None else torch.device("cpu")
        self._handles: list = []
        # open ranges by name: closed by name, not as a stack, because autograd may finish a part's
        # backward after starting another's, and checkpoint recomputation may stop inside a part
        self._open: dict[str, tuple] = {}
        self._records: list = []  # (category, phase, start, end)
        if nvtx and not nvtx_available():
            raise ValueError("PartRanges(nvtx=True): this torch build has no NVTX binding (a CPU-only build); "
                             "NVTX ranges need a CUDA build of torch")

    def parts(self) -> list[tuple[str, str, nn.Module]]:
        """(range name, category, module) of every part."""
        m = self.model
        out = [("patch_embed", "patch_embed", m.x_embedder)]
        for i, block in enumerate(m.blocks):
            out += [(f"block{i}.{n}", n, getattr(block, n)) for n in ("self_attn", "cross_attn", "mlp")]
        if hasattr(m, "control_blocks"):
            out.append(("control_embed", "control_branch", m.control_embedder))
            out += [(f"control{j}", "control_branch", b) for j, b in enumerate(m.control_blocks)]
        out.append(("final_layer", "final_layer", m.final_layer))
        return out

    def __enter__(self):
        for name, category, module in self.parts():
            self._handles += [
                module.register_forward_pre_hook(lambda mod, args, n=name, c=category: self._forward_enter(n, c)),
                module.register_forward_hook(lambda mod, args, out, n=name: self._forward_exit(n), always_call=True),
            ]
            # the embedders of data (latents, control videos) get no input gradient, so a full
            # backward hook could not bracket their weight-gradient matmul: their backward is "other"
            data_facing = category in ("patch_embed", "control_branch") and name.endswith("embed")
            if not data_facing:
                self._handles += [
                    module.register_full_backward_pre_hook(
                        lambda mod, grad_out, n=name, c=category: self._enter(f"{n}.bwd", c, "bwd")),
                    module.register_full_backward_hook(lambda mod, grad_in, grad_out, n=name: self._exit(f"{n}.bwd")),
                ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for name in list(self._open):  # ranges a failure left open: close them, record nothing
            self._exit(name, record=False)
        return False

    @contextlib.contextmanager
    def range(self, name: str, category: str | None = None, phase: str = "step"):
        self._enter(name, category or name, phase)
        try:
            yield
        finally:
            self._exit(name)

    def _forward_enter(self, name: str, category: str) -> None:
        if _in_backward():
            self._enter(f"{name}.recompute", category, "recompute")
        else:
            self._enter(name, category, "fwd")

    def _forward_exit(self, name: str) -> None:
        self._exit(f"{name}.recompute" if f"{name}.recompute" in self._open else name)

    def _enter(self, name: str, category: str, phase: str) -> None:
        if name in self._open:  # a range left open (e.g. recomputation stopped early): drop it
            self._exit(name, record=False)
        # torch's own NVTX binding (no extra package); ranges are named "cosmos/<part>"
        handle = torch.cuda.nvtx.range_start(f"cosmos/{name}") if self.use_nvtx else None
        prof = torch.ops.profiler._record_function_enter_new(name, None) if self.use_profiler else None
        start = self._stamp() if self.timing else None
        self._open[name] = (category, phase, handle, prof, start)

    def _exit(self, name: str, record: bool = True) -> None:
        if name not in self._open:
            return
        category, phase, handle, prof, start = self._open.pop(name)
        if self.timing and record:
            self._records.append((category, phase, start, self._stamp()))
        if prof is not None:
            torch.ops.profiler._record_function_exit._RecordFunction(prof)
        if handle is not None:
            torch.cuda.nvtx.range_end(handle)

    def _stamp(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def times(self) -> dict[tuple[str, str], float]:
        """Seconds per (category, phase) since the last call (waits for the device)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        totals: dict[tuple[str, str], float] = {}
        for category, phase, start, end in self._records:
            sec = start.elapsed_time(end) / 1e3 if self.device.type == "cuda" else end - start
            totals[category, phase] = totals.get((category, phase), 0.0) + sec
        self._records.clear()
        return totals
