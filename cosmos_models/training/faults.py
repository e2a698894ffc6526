"""What a run does when something goes wrong (the runner, runner.py, calls these):

    StopSignals             SIGTERM / SIGUSR1 / SIGINT (a scheduler's preemption notice, Ctrl-C): the
                            first is remembered and the step in progress finishes; a second exits at once
    agreed_signal           the ranks agree after every step whether one of them was signalled (a
                            MAX all-reduce of one integer), so all stop and save at the same step
    all_finite              every floating tensor of a state is finite on every rank: a checkpoint never
                            holds NaN or Inf weights
    is_collective_failure   an exception of torch.distributed that means another process died or a
                            collective timed out (gloo raises a plain RuntimeError naming gloo)
    write_failure           the OSError (ENOSPC, EACCES, ...) behind a failed checkpoint write
    probe_write             when there is none to show: what a small write into the folder raises
    free_space              what is left on the filesystem (said with a failed write)

Why signals set a flag instead of raising: a signal can arrive inside a collective or inside DCP's
write; raising there would leave the other ranks waiting and a half-written folder. The flag is read
between steps, where every rank is at the same place.
"""
from __future__ import annotations

import errno
import os
import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
_COLLECTIVE_MARKERS = ("gloo/", "ProcessGroupNCCL", "Connection closed by peer", "Connection reset by peer")


class StopSignals:
    """Inside `with StopSignals(name, rank) as stop:` the stop signals set `stop.signum` (the first
    one) instead of ending the process; a second stop signal exits at once with 128 + its number.
    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self, name: str, rank: int = 0):
        self.name, self.rank = name, rank
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"cosmos {self.name}: second stop signal ({name}): exiting now, without a checkpoint of "
                        "this step\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        if self.rank == 0:
            os.write(2, f"cosmos {self.name}: {name} received: finishing this step, then saving a checkpoint "
                        f"(send it again to exit at once)\n".encode())


def agreed_signal(local: int | None, device: torch.device, world: int) -> int | None:
    """The stop signal any rank received (the highest number if several), the same on every rank."""
    if world == 1:
        return local
    flag = torch.tensor([local or 0], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def all_finite(state, device: torch.device, world: int) -> bool:
    """True when every floating tensor in the (nested) state is finite on every rank; one sync."""
    bad = torch.zeros((), dtype=torch.int64, device=device)
    for t in _tensors(state):
        local = t.to_local() if hasattr(t, "to_local") else t
        if local.is_floating_point() and local.numel():
            bad += (~torch.isfinite(local)).any().to(device)
    if world > 1:
        flag = bad.to("cpu" if device.type != "cuda" else device).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = flag
    return not bool(bad.item())


def is_collective_failure(exc: BaseException) -> bool:
    """Another process died or a collective timed out (or a process-group error of that kind)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
        return False
    # gloo raises a RuntimeError; DCP wraps a rank's failure in CheckpointException (a BaseException)
    return any(m in str(exc) for m in _COLLECTIVE_MARKERS)


def collective_summary(exc: BaseException) -> str:
    """The useful part of a process-group error: gloo/NCCL put the source path in brackets first."""
    text = " ".join(str(exc).split())
    if text.startswith("[") and "]" in text:
        text = text.split("]", 1)[1].strip()
    return text[:300]


def write_failure(exc: BaseException) -> OSError | None:
    """The OSError behind a failed checkpoint write: the exception itself, its cause or context, or
    one that DCP collected from a rank (CheckpointException.failures); None when there is none."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        stack += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            for failure in failures.values():
                # DCP keeps (exception, stack summary) per failed rank
                stack.append(failure[0] if isinstance(failure, tuple) else failure)
    return None


def innermost(exc: BaseException) -> BaseException:
    """The exception DCP collected from a failed rank (CheckpointException.failures), else exc."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        failure = next(iter(failures.values()))
        return failure[0] if isinstance(failure, tuple) else failure
    return exc


def probe_write(folder: str, nbytes: int = 1 << 20) -> OSError | None:
    """Write (and remove) nbytes into `folder`; the OSError that raises, else None. Said after a
    checkpoint write failed with no OSError to show: torch.save's zip writer reports a failed write
    of its file object as "unexpected pos", so the probe asks the filesystem what is wrong."""
    path = os.path.join(folder, f".write_probe.{os.getpid()}.tmp")
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * nbytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    return None


def free_space(path: str) -> str:
    """"N GiB free on the filesystem of path" (or why that is unknown)."""
    import shutil

    try:
        return f"{shutil.disk_usage(path).free / 2 ** 30:.1f} GiB free there"
    except OSError as exc:
        return f"free space unknown: {exc.strerror}"


def describe_oserror(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc} [{name}]{where}"
