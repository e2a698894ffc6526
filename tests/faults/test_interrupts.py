"""A run that is killed, stopped or started twice: kill -9 between steps and in the middle of a
checkpoint write, SIGTERM (a scheduler's preemption notice) and a second SIGTERM, a second run on
the same folder, a resume with changed settings. In each case the folder keeps only complete
checkpoints and the resumed run is the uninterrupted one, bit for bit (conftest.assert_same_run)."""
from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.faults.conftest import (assert_one_line, assert_same_run, checkpoints, cosmos, finish, latest, records,
                                   spawn, train_args, wait_for)


def _writing(out, step: int):
    tmp = Path(out) / "checkpoints" / f"step_{step:06d}.tmp"
    return lambda: tmp.is_dir() and any(tmp.iterdir())


def _resume(out, data, *extra):
    proc = cosmos(train_args(out, data, "--resume", *extra))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("point", ["between-steps", "checkpoint-write"])
def test_kill_9_then_resume_is_the_uninterrupted_run(point, fault_data, reference, tmp_path):
    out = tmp_path / "run"
    if point == "between-steps":
        # a random moment within steps 3-4 (seeded, so a failure can be replayed)
        delay = random.Random(20).uniform(0.0, 0.25)
        proc = spawn(train_args(out, fault_data), inject=["--step-sleep", "0.25"])
        wait_for("step 3 in the log", lambda: len(records(out)) >= 3, proc)
        time.sleep(delay)
    else:
        # while step 4's checkpoint is half written (every write into its .tmp folder is slowed)
        proc = spawn(train_args(out, fault_data), inject=["--slow-writes", "1"])
        wait_for("step 4's checkpoint being written", _writing(out, 4), proc)
    proc.kill()
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL
    assert latest(out) in checkpoints(out) and latest(out) <= "step_000004"
    if point == "checkpoint-write":
        assert latest(out) == "step_000002"  # the half-written step 4 is not named
    resumed = _resume(out, fault_data)
    assert "resumed from" in resumed.stdout
    assert "taking over the lock" in resumed.stdout  # the dead run's pid, said once
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert_same_run(out, reference)


def test_sigterm_saves_the_step_and_says_how_to_resume(stopped_run, fault_data, reference, tmp_path):
    """SIGTERM: the step in progress ends, a checkpoint of it is written, exit 128 + 15 with the resume
    command; a resume that changes only how often it saves is the uninterrupted run, and the change
    is recorded in run.json. Meanwhile a second run on the same folder was refused at once."""
    src, stderr, second = stopped_run
    assert second.returncode == 2
    assert_one_line(second.stderr, "cosmos train: error:", str(src), "in use", "pid")
    step = 3
    assert latest(src) == f"step_{step:06d}"
    assert "SIGTERM received: finishing this step" in stderr
    assert f"stopped by SIGTERM at step {step} of 6; checkpoint " in stderr
    assert "resume with: cosmos train " in stderr and "--resume" in stderr
    assert "Traceback" not in stderr

    out = tmp_path / "run"
    shutil.copytree(src, out)
    _resume(out, fault_data, "--save-every", "3", "--keep-last", "1")
    assert_same_run(out, reference)
    assert checkpoints(out) == ["step_000006"]  # --keep-last 1
    run = json.loads((out / "run.json").read_text())
    assert len(run["resumes"]) == 1 and run["resumes"][0]["from"] == f"step_{step:06d}"
    assert any(change.startswith("--save-every: 2 -> 3") for change in run["resumes"][0]["changes"]), run["resumes"]


def test_a_changed_identity_is_refused_unless_allowed(stopped_run, fault_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    changed = cosmos(train_args(out, fault_data, "--resume", "--seed", "1"))
    assert changed.returncode == 2
    assert_one_line(changed.stderr, "seed", "--allow-change seed")
    unknown = cosmos(train_args(out, fault_data, "--resume", "--allow-change", "colour"))
    assert unknown.returncode == 2
    assert_one_line(unknown.stderr, "--allow-change colour", "expected one of")
    allowed = cosmos(train_args(out, fault_data, "--resume", "--seed", "1", "--allow-change", "seed"))
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert any(change.startswith("seed") or change.startswith("--seed") for change in run["resumes"][-1]["changes"]), run["resumes"]


def test_a_second_signal_exits_at_once_and_leaves_the_last_checkpoint(fault_data, reference, tmp_path):
    """SIGTERM while step 4's checkpoint is being written, then SIGTERM again: the process exits at once
    (128 + 15) without finishing that checkpoint; `latest` still names step 2 and the resume is exact."""
    out = tmp_path / "run"
    proc = spawn(train_args(out, fault_data), inject=["--slow-writes", "1"])
    wait_for("step 4's checkpoint being written", _writing(out, 4), proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code, _, stderr = finish(proc, timeout=20)
    assert code == 128 + signal.SIGTERM, stderr
    assert "second stop signal (SIGTERM): exiting now" in stderr
    assert latest(out) == "step_000002"
    _resume(out, fault_data)
    assert_same_run(out, reference)
