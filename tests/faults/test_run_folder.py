"""The run folder's lock and manifest in one process (cosmos_models.training.run_folder): the lock
refuses a second holder by name, is free again after release, falls back to the pid it records on a
filesystem without flock (live holder refused, dead holder taken over with a warning); compare()
sorts a resumed run's changes into refused, warned and recorded."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cosmos_models.errors import RunFolderInUse
from cosmos_models.training import run_folder
from cosmos_models.training.run_folder import RunLock


def test_second_holder_is_refused_by_name_and_release_frees_it(tmp_path):
    first = RunLock.acquire(str(tmp_path), warn=pytest.fail)
    with pytest.raises(RunFolderInUse, match=rf"{tmp_path} is in use by pid {os.getpid()} on {socket.gethostname()} "):
        RunLock.acquire(str(tmp_path), warn=pytest.fail)
    first.release()
    first.release()  # twice is harmless
    RunLock.acquire(str(tmp_path), warn=pytest.fail).release()  # no takeover warning after a clean release


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", no_flock)
    warnings = []
    held = RunLock.acquire(str(tmp_path), warn=warnings.append)
    assert any("without flock" in w for w in warnings)
    with pytest.raises(RunFolderInUse, match=f"pid {os.getpid()}"):  # the holder (this process) is alive
        RunLock.acquire(str(tmp_path), warn=warnings.append)
    os.close(held.fd)  # the process "dies" without releasing
    held.fd = None
    (tmp_path / ".lock").write_text(f'{{"pid": {_dead_pid()}, "host": "{socket.gethostname()}", "since": "then"}}')
    warnings.clear()
    RunLock.acquire(str(tmp_path), warn=warnings.append).release()
    assert any("taking over the lock" in w and "no longer running" in w for w in warnings), warnings


def _record(identity=None, **settings):
    layout = SimpleNamespace(world=1, cp=1, replicate=1, device=SimpleNamespace(type="cpu"))
    base = {"steps": 10, "lr": 1e-4, "log_every": 1, "seed": 0}
    base.update(settings)
    return run_folder.manifest("train", identity or {"config": "tiny (contents 1)", "seed": 0, "batch": 2}, base,
                               layout, {"warmup": 2})


def test_compare_sorts_changes():
    saved = _record()
    same = run_folder.compare(saved, _record())
    assert same == ([], [], [])
    refused, warned, recorded = run_folder.compare(saved, _record({"config": "tiny-natten (contents 2)", "seed": 0,
                                                                   "batch": 2}))
    assert refused == recorded == ["config: tiny (contents 1) -> tiny-natten (contents 2)"] and not warned
    refused, _, recorded = run_folder.compare(saved, _record({"config": "tiny (contents 1)", "seed": 1, "batch": 2},
                                                             seed=1), allowed=["seed"])
    assert not refused and recorded == ["seed: 0 -> 1"]  # the setting is the identity's: said once
    refused, warned, recorded = run_folder.compare(saved, _record(steps=20, log_every=5, lr=3e-4))
    assert not refused and warned == ["--lr: 0.0001 -> 0.0003"]
    assert sorted(recorded) == ["--log-every: 1 -> 5", "--lr: 0.0001 -> 0.0003", "--steps: 10 -> 20"]
    moved = _record()
    moved["recipe"] = {"warmup": 4}
    _, warned, _ = run_folder.compare(saved, moved)
    assert warned == ["warmup (resolved): 2 -> 4 (pass --warmup 2 to keep it)"]
