"""Failures a user can cause and fix, as exceptions whose message says what happened and what to do.

The `cosmos` command prints such an error as one line on stderr and exits non-zero (cli/__init__.py);
`--debug` shows the traceback. Each class says which exit code the command returns for it, so a
scheduler or a script can tell "fix the input" (2) from "the run diverged" (3) or "a process died" (4).
"""
from __future__ import annotations


class RunError(RuntimeError):
    """An expected failure of a command (the message is the whole story)."""

    exit_code = 2
    prefix = "error: "


class RunFolderInUse(RunError):
    """Another process holds the run folder's lock (training/run_folder.py)."""


class RunFolderMismatch(RunError):
    """--resume with settings that change the model or the data order of the run folder's run."""


class Diverged(RunError):
    """Too many non-finite steps in a row (--max-bad-steps), or non-finite weights at a save."""

    exit_code = 3


class ProcessesLost(RunError):
    """A collective failed: another process died, or one timed out (--dist-timeout)."""

    exit_code = 4


class CheckpointWriteFailed(RunError):
    """Writing a checkpoint failed (a full disk, a permission); the previous checkpoint is intact."""

    exit_code = 5


class RunStopped(RunError):
    """A run stopped on a signal (SIGTERM, SIGUSR1, SIGINT) after saving a checkpoint; not a failure
    of the run, so no "error:" in front; the exit code is the shell's for that signal (128 + number)."""

    prefix = ""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


# ----------------------------------------------------------------------------- out of GPU memory
OOM_HINTS = {
    "train": "Lower --batch, --resolution or --frames, checkpoint more activations (--sac), or shard over more "
             "GPUs (more processes, --cp)",
    "distill": "Lower --batch, --resolution or --frames, checkpoint activations (--sac), or shard over more GPUs",
    "sample": "Lower --resolution or --frames, or sample on more GPUs",
}


def is_oom(exc: BaseException) -> bool:
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return False
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if k is not None)
    return bool(kinds) and isinstance(exc, kinds)


def describe_oom(exc: BaseException, command: str) -> str:
    """One sentence: the device, what the failed allocation asked for, what was in use and what the
    device has (the estimated need is the two together), and what to lower."""
    import re

    import torch

    asked = re.search(r"Tried to allocate ([0-9.]+ [KMGT]iB)", str(exc))
    device = re.search(r"GPU (\d+)", str(exc))
    index = int(device.group(1)) if device else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
    parts = [f"out of memory on cuda:{index}"]
    if torch.cuda.is_available():
        gib = 2 ** 30
        free, total = torch.cuda.mem_get_info(index)
        used = torch.cuda.memory_allocated(index) / gib
        need = f"; this step needs about {used + _gib(asked.group(1)):.1f} GiB" if asked else ""
        parts.append(f"{total / gib:.1f} GiB on the device, {used:.1f} GiB held by this process"
                     + (f", {asked.group(1)} more asked for" if asked else "") + need)
    elif asked:
        parts.append(f"{asked.group(1)} more asked for")
    detail = f" ({parts[1]})" if len(parts) > 1 else ""
    return f"{parts[0]}{detail}. {OOM_HINTS.get(command, 'Lower the sizes this command works on')}"


def _gib(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"KiB": 2 ** -20, "MiB": 2 ** -10, "GiB": 1.0, "TiB": 1024.0}[unit]
