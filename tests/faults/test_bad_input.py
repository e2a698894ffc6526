"""What goes wrong inside a run that is not the run's fault: bad files in the data folder, NaN in a
batch, a disk that fills up while a checkpoint is written, a GPU out of memory; and the same stop
signal handling for `cosmos distill`. Each is a warning and a skipped item, or one line on stderr
with its exit code (cosmos_models.errors), with the folder left resumable."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import torch

from tests.faults.conftest import (assert_one_line, assert_same_run, checkpoints, cosmos, ema, finish, latest, losses,
                                   records, spawn, train_args, wait_for)

BAD_FILES = {  # name -> what is wrong with it
    "truncated.mp4": "the first 1500 bytes of a clip",
    "empty.mp4": "no bytes",
    "noise.mkv": "random bytes with a video extension",
    "caption.mp4": "a text file named as a video",
    "no_embedding.mp4": "a good clip without its <name>.pt",
    "bad_latent.mp4": "a good clip whose cached latent is garbage",
}


def _bad_data(src, dst, *, keep_good: bool = True):
    os.makedirs(dst)
    good = sorted(f for f in os.listdir(src) if f.endswith(".mp4"))
    if keep_good:
        for name in os.listdir(src):
            shutil.copy(os.path.join(src, name), dst)
    clip, embedding, latent = (os.path.join(src, good[0][:-4] + s) for s in (".mp4", ".pt", ".latent.pt"))
    with open(clip, "rb") as f:
        head = f.read(1500)
    (dst / "truncated.mp4").write_bytes(head)
    (dst / "empty.mp4").write_bytes(b"")
    (dst / "noise.mkv").write_bytes(os.urandom(4096))
    (dst / "caption.mp4").write_text("a robot arm picks up a red cube\n")
    shutil.copy(clip, dst / "no_embedding.mp4")
    shutil.copy(clip, dst / "bad_latent.mp4")
    (dst / "bad_latent.latent.pt").write_bytes(os.urandom(512))
    for name in BAD_FILES:
        if name != "no_embedding.mp4":
            shutil.copy(embedding, dst / (os.path.splitext(name)[0] + ".pt"))
    # read at its first use, not at the start: a cached latent full of NaN
    shutil.copy(clip, dst / "nan_latent.mp4")
    shutil.copy(embedding, dst / "nan_latent.pt")
    torch.save(torch.full_like(torch.load(latent), float("nan")), dst / "nan_latent.latent.pt")


def test_bad_data_files_are_skipped_with_one_warning_each(fault_data, tmp_path):
    data = tmp_path / "data"
    _bad_data(fault_data, data)
    proc = cosmos(train_args(tmp_path / "run", data, steps=6))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in proc.stderr.splitlines() if line.startswith("cosmos train: warning: skipping ")]
    for name in [*BAD_FILES, "nan_latent.mp4"]:
        about = [line for line in warned if f"{os.sep}{name}:" in line]
        assert len(about) == 1, (name, warned)  # once, though 6 steps pass over every file 3 times
    assert "holds NaN or Inf" in next(line for line in warned if "nan_latent" in line)
    assert len(warned) == len(BAD_FILES) + 1, warned
    assert f"data: 5 usable files under {data}, {len(BAD_FILES)} skipped" in proc.stdout
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records(tmp_path / "run"))


def test_a_folder_of_only_bad_files_is_one_error(fault_data, tmp_path):
    data = tmp_path / "data"
    _bad_data(fault_data, data, keep_good=False)
    for name in os.listdir(data):
        if name.startswith("nan_latent"):
            os.remove(data / name)
    proc = cosmos(train_args(tmp_path / "run", data))
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "cosmos train: error:", "no usable files", str(data))


def test_a_nan_batch_is_skipped_and_the_run_goes_on(fault_data, reference, tmp_path):
    out = tmp_path / "run"
    proc = cosmos(train_args(out, fault_data), inject=["--nan-steps", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: loss nan" in proc.stdout and "step skipped" in proc.stdout
    log = {r["step"]: r for r in records(out)}
    assert log[3]["skipped_steps"] == [3]
    assert {s: losses(out)[s] for s in (1, 2)} == {s: losses(reference)[s] for s in (1, 2)}
    assert all(torch.isfinite(t).all() for t in ema(out).values())
    assert checkpoints(out)[-1] == "step_000006"


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint(fault_data, tmp_path):
    out = tmp_path / "run"
    proc = cosmos(train_args(out, fault_data, "--max-bad-steps", "2"), inject=["--nan-steps", "3-100"])
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert_one_line(proc.stderr, "cosmos train: error: 3 steps in a row (3..5)", "--max-bad-steps 2",
                    "last good checkpoint is", "step_000004")
    assert latest(out) == "step_000004"


def test_a_full_disk_keeps_the_previous_checkpoint(fault_data, reference, tmp_path):
    """The disk fills up while step 4's checkpoint is written (step 2's is about 3.3 MB): exit 5, one
    line naming the intact previous checkpoint; `latest` never names the partial one; the resume
    (with space again) is the uninterrupted run."""
    out = tmp_path / "run"
    proc = cosmos(train_args(out, fault_data), inject=["--enospc-after", "5000000"])
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert_one_line(proc.stderr, "writing the checkpoint of step 4", "[ENOSPC]", "GiB free",
                    "the previous checkpoint", "step_000002 is intact")
    assert latest(out) == "step_000002" and checkpoints(out)[-1].startswith("step_000004.tmp")
    resumed = cosmos(train_args(out, fault_data, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, reference)


def test_out_of_memory_is_one_line_and_debug_shows_the_traceback(fault_data, tmp_path):
    proc = cosmos(train_args(tmp_path / "a", fault_data), inject=["--oom-at-step", "2"])
    assert proc.returncode == 2
    line = assert_one_line(proc.stderr, "cosmos train: error:", "out of memory", "2.00 GiB more asked for")
    assert "--batch" in line or "--sac" in line, line
    debug = cosmos(train_args(tmp_path / "b", fault_data, "--debug"), inject=["--oom-at-step", "2"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "OutOfMemoryError" in debug.stderr


def test_distill_stops_on_sigterm_and_resumes(reference, fault_data, tmp_path):
    """`cosmos distill` shares the run scaffold: SIGTERM saves its step, exit 143, the resume runs on."""
    out, hold = tmp_path / "distill", tmp_path / "hold"
    hold.touch()
    args = ["distill", "--teacher", str(reference / "ema.safetensors"), "--config", "tiny", "--out", str(out),
            "--data", str(fault_data), "--frames", "5", "--steps", "4", "--batch", "2", "--log-every", "1",
            "--save-every", "0", "--kernel-backend", "torch", "--no-progress"]
    proc = spawn(args, inject=["--hold", f"2:{hold}"])
    log = out / "distill_log.jsonl"
    wait_for("iteration 1 in the log", lambda: log.is_file() and log.read_text().count("\n") >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    hold.unlink()
    code, _, stderr = finish(proc)
    assert code == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step 2 of 4" in stderr and "cosmos distill" in stderr
    assert latest(out) == "step_000002"
    resumed = cosmos([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps[-2:] == [3, 4]
