"""The fault suite's shared pieces: one small dataset and one uninterrupted reference run per session,
and helpers to run `cosmos train` as a user would (a child process, through tests/faults/inject.py
when a fault is injected), to wait for a point in a running child, and to compare run folders.

Every run trains the tiny config on 4 generated 64x64, 5-frame clips with cached latents, batch 2,
6 steps, a checkpoint every 2; the torch kernel backend and one thread per process, so runs on one
layout are bit-for-bit reproducible and a resumed run can be compared with the reference exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 5
STEPS = 6


def env(**extra) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "COSMOS_KERNELS_BACKEND")}
    base.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    base.update({k: str(v) for k, v in extra.items()})
    return base


def train_args(out, data, *extra, steps: int = STEPS, batch: int = 2) -> list[str]:
    return ["train", "--config", "tiny", "--out", str(out), "--data", str(data), "--frames", str(FRAMES),
            "--steps", str(steps), "--batch", str(batch), "--log-every", "1", "--save-every", "2",
            "--kernel-backend", "torch", "--dist-timeout", "30", "--no-progress", *map(str, extra)]


def command(args, inject=()) -> list[str]:
    if inject:
        return [sys.executable, "-m", "tests.faults.inject", *map(str, inject), "--", *args]
    return [sys.executable, "-m", "cosmos_models.cli", *args]


def cosmos(args, inject=(), timeout: float = 120, **env_extra) -> subprocess.CompletedProcess:
    """Run a cosmos command to its end; the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(command(args, inject), cwd=ROOT, env=env(**env_extra), capture_output=True, text=True,
                          timeout=timeout)


def spawn(args, inject=(), **env_extra) -> subprocess.Popen:
    """Start a cosmos command; the caller signals it, then `finish`es it."""
    return subprocess.Popen(command(args, inject), cwd=ROOT, env=env(**env_extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end within {timeout} s\n{out[-3000:]}\n{err[-3000:]}") from None
    return proc.returncode, out, err


def wait_for(what: str, predicate, *procs: subprocess.Popen, timeout: float = 60) -> None:
    """Poll predicate() until true; fail if a process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                out, err = p.communicate()
                raise AssertionError(f"the run ended (exit {p.returncode}) before {what}\n{out[-3000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def records(out) -> list[dict]:
    path = Path(out) / "train_log.jsonl"
    if not path.is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def losses(out) -> dict[int, float]:
    """step -> loss, the last record of each step (a resumed run logs again the steps it redoes)."""
    return {r["step"]: r["loss"] for r in records(out)}


def checkpoints(out) -> list[str]:
    root = Path(out) / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step_")) if root.is_dir() else []


def latest(out) -> str:
    return (Path(out) / "checkpoints" / "latest").read_text().strip()


def ema(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "ema.safetensors"))


def assert_same_run(out, reference) -> None:
    """Bit for bit the reference run: every step's loss and the exported EMA weights."""
    got, want = losses(out), losses(reference)
    assert got == want, (got, want)
    a, b = ema(out), ema(reference)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"EMA weights differ from the uninterrupted run: {different[:5]}"


def assert_close_run(out, reference, rtol: float = 1e-4) -> None:
    """The reference run up to floating-point reduction order (another process layout)."""
    got, want = losses(out), losses(reference)
    assert sorted(got) == sorted(want), (got, want)
    for step in want:
        assert abs(got[step] - want[step]) <= rtol * abs(want[step]), (step, got, want)
    a, b = ema(out), ema(reference)
    for k in b:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-6), k


def assert_one_line(err: str, *needles: str) -> str:
    """stderr is one `cosmos train:` line (after the data warnings), holding every needle; no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and ": warning:" not in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory) -> Path:
    import cosmos_models as cm
    from cosmos_models.data import prepare

    root = tmp_path_factory.mktemp("fault_data")
    prepare.prepare_synthetic(str(root / "data"), cm.get_config("tiny"), num_frames=FRAMES, size=(64, 64), clips=4,
                              vae_dir=str(root / "vae"), device=torch.device("cpu"))
    return root / "data"


@pytest.fixture(scope="session")
def reference(fault_data, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = cosmos(train_args(out, fault_data))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    return out


@pytest.fixture(scope="session")
def stopped_run(fault_data, tmp_path_factory):
    """A run stopped by SIGTERM during step 3 (copied by the tests that resume it); while it was held
    before step 3, a second run was started on its folder. (folder, its stderr, the second run)."""
    root = tmp_path_factory.mktemp("stopped")
    out, hold = root / "run", root / "hold"
    hold.touch()
    proc = spawn(train_args(out, fault_data), inject=["--hold", f"3:{hold}"])
    wait_for("step 2 in the log", lambda: len(records(out)) >= 2, proc)
    second = cosmos(train_args(out, fault_data, "--resume"))
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    hold.unlink()
    code, stdout, stderr = finish(proc)
    assert code == 128 + signal.SIGTERM, stdout + stderr
    return out, stderr, second
