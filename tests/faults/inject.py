"""The fault suite's child process: `cosmos` with a fault injected.

    python -m tests.faults.inject [--enospc-after BYTES] [--slow-writes S] [--nan-steps A-B]
                                  [--oom-at-step N] [--step-sleep S] [--hold STEP:PATH] -- COMMAND ARGS...

--enospc-after BYTES  files written under a checkpoint's .tmp folder raise OSError(ENOSPC) once
                      this many bytes have been written into them (a disk that fills up mid-write)
--slow-writes S       each file written into a checkpoint's .tmp folder waits S seconds before its
                      first write (so a test can kill the process while a checkpoint is half written)
--nan-steps A-B       the latents of the batches of steps A..B (1-based) are NaN
--oom-at-step N       step N raises torch.OutOfMemoryError as the CUDA allocator would
--step-sleep S        every step sleeps S seconds first (time to send a signal mid-run)
--hold STEP:PATH      before step STEP, wait while the file PATH exists (a test holds the run at a
                      known point, acts, then removes PATH)

The patches stand in for the world (a disk, a bad batch, a GPU), not for the code under test: the
runner, checkpointing and CLI run as they do for users.
"""
from __future__ import annotations

import argparse
import builtins
import errno
import io
import os
import sys
import time


class _FaultyFile:
    """A file object whose writes fail with ENOSPC past a shared byte budget, or whose first write waits."""

    budget: list[int | None] = [None]

    def __init__(self, raw, path, slow):
        self._raw, self._path, self._slow = raw, path, slow

    def write(self, data):
        if self._slow:
            time.sleep(self._slow)
            self._slow = 0
        left = _FaultyFile.budget[0]
        if left is not None:
            n = len(data) if not isinstance(data, memoryview) else data.nbytes
            if n > left:
                self._raw.write(bytes(data)[:left])
                _FaultyFile.budget[0] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
            _FaultyFile.budget[0] = left - n
        return self._raw.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.close()

    def __getattr__(self, name):
        return getattr(self._raw, name)


def _patch_checkpoint_writes(enospc_after, slow):
    real_open = io.open
    _FaultyFile.budget[0] = enospc_after

    def faulty_open(file, mode="r", *args, **kwargs):
        raw = real_open(file, mode, *args, **kwargs)
        path = os.fspath(file) if isinstance(file, (str, bytes, os.PathLike)) else ""
        path = path.decode() if isinstance(path, bytes) else path
        if any(m in mode for m in "wax") and f"{os.sep}checkpoints{os.sep}" in path and ".tmp" in path:
            return _FaultyFile(raw, path, slow)
        return raw

    io.open = builtins.open = faulty_open


def _patch_steps(nan_steps, oom_at, sleep, hold):
    import torch

    from cosmos_models.training.runner import Run

    original = Run.next_batch

    def next_batch(self):
        step = self.step + 1
        if sleep:
            time.sleep(sleep)
        if hold is not None and step == hold[0]:
            while os.path.exists(hold[1]):
                time.sleep(0.02)
        if oom_at is not None and step == oom_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                         "of 79.19 GiB of which 1.12 GiB is free.")
        batch = original(self)
        if nan_steps is not None and nan_steps[0] <= step <= nan_steps[1]:
            batch = dict(batch)
            batch["latent"] = torch.full_like(batch["latent"], float("nan"))
        return batch

    Run.next_batch = next_batch


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="inject", allow_abbrev=False)
    parser.add_argument("--enospc-after", type=int, default=None)
    parser.add_argument("--slow-writes", type=float, default=0.0)
    parser.add_argument("--nan-steps", default=None)
    parser.add_argument("--oom-at-step", type=int, default=None)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--hold", default=None)
    args = parser.parse_args(argv[:split])
    if args.enospc_after is not None or args.slow_writes:
        _patch_checkpoint_writes(args.enospc_after, args.slow_writes)
    nan = None
    if args.nan_steps:
        first, _, last = args.nan_steps.partition("-")
        nan = (int(first), int(last or first))
    hold = None
    if args.hold:
        step, _, path = args.hold.partition(":")
        hold = (int(step), path)
    if nan or args.oom_at_step is not None or args.step_sleep or hold:
        _patch_steps(nan, args.oom_at_step, args.step_sleep, hold)
    from cosmos_models.cli import main as cosmos

    sys.argv = ["cosmos", *argv[split + 1:]]
    return cosmos(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
