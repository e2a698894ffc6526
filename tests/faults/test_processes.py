"""Runs of several processes (ranks started as torchrun starts them: RANK, WORLD_SIZE, MASTER_ADDR/PORT)
when one of them is signalled or dies, and checkpoints resumed on another number of processes: a
SIGTERM to one rank stops every rank at the same step; a rank killed with -9 ends the others with
exit 4 and a message well within --dist-timeout; 2 ranks x batch 1 resume as 1 x batch 2 and back,
continuing the reference run (same global batch, same data order) up to reduction order."""
from __future__ import annotations

import shutil
import signal
import time

from tests import helpers
from tests.faults.conftest import (assert_close_run, assert_one_line, cosmos, finish, latest, records, spawn,
                                   train_args, wait_for)


def _ranks(args, world=2, inject=()):
    port = helpers.free_port()
    return [spawn(args, inject=inject, RANK=r, LOCAL_RANK=r, WORLD_SIZE=world, MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=port) for r in range(world)]


def _held_ranks(out, data, tmp_path):
    """Two ranks (batch 1 each), held before step 3 once step 2 is logged."""
    hold = tmp_path / "hold"
    hold.touch()
    procs = _ranks(train_args(out, data, batch=1), inject=["--hold", f"3:{hold}"])
    wait_for("step 2's checkpoint", lambda: len(records(out)) >= 2 and (out / "checkpoints" / "latest").is_file(),
             *procs)
    return procs, hold


def test_sigterm_to_one_rank_stops_all_at_the_same_step_and_resumes_on_one(fault_data, reference, tmp_path):
    out = tmp_path / "run"
    procs, hold = _held_ranks(out, fault_data, tmp_path)
    procs[1].send_signal(signal.SIGTERM)  # as a scheduler preempting one node would
    time.sleep(0.2)
    hold.unlink()
    ends = [finish(p) for p in procs]
    assert [code for code, _, _ in ends] == [128 + signal.SIGTERM] * 2, ends
    # rank 0 may already wait in step 2's agreement when rank 1 is signalled: then both stop at 2
    step = records(out)[-1]["step"]
    assert step in (2, 3) and f"stopped by SIGTERM at step {step} of 6" in ends[0][2]
    assert latest(out) == f"step_{step:06d}"
    resumed = cosmos(train_args(out, fault_data, "--resume"))  # 1 process x batch 2: the same global batch
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "written by 2 processes, resharded to 1" in resumed.stdout
    assert_close_run(out, reference)


def test_a_one_process_checkpoint_resumes_on_two(stopped_run, fault_data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    ends = [finish(p, timeout=120) for p in _ranks(train_args(out, fault_data, "--resume", batch=1))]
    assert [code for code, _, _ in ends] == [0, 0], ends
    assert "written by 1 processes, resharded to 2" in ends[0][1]
    assert_close_run(out, reference)


def test_a_changed_global_batch_is_refused(stopped_run, fault_data, tmp_path):
    """Stopped at step 3 of batch 2 (6 samples into the epoch): a resume on 1 process x batch 4 would
    change the global batch (the run's identity) and is refused with what to keep equal."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    refused = cosmos(train_args(out, fault_data, "--resume", batch=4))
    assert refused.returncode == 2
    assert_one_line(refused.stderr, "batch", "--allow-change batch")


def test_a_killed_rank_ends_the_others_with_exit_4(fault_data, tmp_path):
    out = tmp_path / "run"
    procs, hold = _held_ranks(out, fault_data, tmp_path)
    procs[1].kill()
    finish(procs[1])
    t0 = time.monotonic()
    hold.unlink()
    code, _, stderr = finish(procs[0], timeout=60)
    waited = time.monotonic() - t0
    assert code == 4, stderr
    line = assert_one_line(stderr, "cosmos train: error: rank 0 of 2: lost the other processes after step 2",
                           "--dist-timeout 30", "step_000002", "--resume")
    assert waited < 30 + 15, (waited, line)
