"""--log-to tensorboard / wandb (cosmos_models.training.loggers): the same numbers as train_log.jsonl, at
the same steps, from a real tiny run; a resumed run continues the same W&B run; a missing package is one
line before any work."""
import json
import sys
import types

import pytest

from cosmos_models import cli
from cosmos_models.training import loggers


def train(out, *extra):
    return cli.main(["train", "--config", "tiny", "--out", str(out), "--steps", "4", "--log-every", "2",
                     "--save-every", "2", "--no-progress", "--kernel-backend", "torch", "--synthetic-clips", "4",
                     "--batch", "2", *extra])


def jsonl(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_parse_kinds():
    assert loggers.parse_kinds(None) == () and loggers.parse_kinds("") == ()
    assert loggers.parse_kinds("wandb, tensorboard,wandb") == ("wandb", "tensorboard")
    with pytest.raises(ValueError, match="unknown logger"):
        loggers.parse_kinds("tensorbord")
    assert loggers.MetricLoggers.scalars({"step": 3, "loss": 0.5, "ok": True, "nan": float("nan"), "s": "x",
                                          "skipped_steps": [1]}) == {"loss": 0.5}


def test_tensorboard_event_file_holds_the_logged_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert train(out, "--log-to", "tensorboard", "--sample-every", "4", "--sample-prompts", "1",
                 "--sample-steps", "2") == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    records = jsonl(out)
    logged = {r["step"]: r["loss"] for r in records}
    seen = {e.step: e.value for e in events.Scalars("train/loss")}
    assert seen.keys() == logged.keys() == {2, 4}
    for step, loss in logged.items():
        assert seen[step] == pytest.approx(loss, rel=1e-6)
    # the loss per noise-level bucket: the window's samples, each in the bucket of its t
    buckets = [k for k in records[0] if k.startswith("loss_t")]
    assert buckets and all(k in events.Tags()["scalars"] for k in (f"train/{b}" for b in buckets))
    for r in records:
        assert r["peak_rss_gib"] > 0 and 0 < r["ema_beta"] < 1
        parts = [r[k] for k in r if k.startswith("loss_t")]
        assert min(parts) <= r["loss"] * (1 + 1e-9) and r["loss"] <= max(parts) * (1 + 1e-9)
    # the preview of step 4: an mp4 of the run's clip shape in samples/, its frame strip in TensorBoard
    from cosmos_models.data.video_io import read_video
    video, _ = read_video(out / "samples" / "step_000004_p0.mp4")
    assert video.shape == (3, 9, 64, 64) and sorted(p.name for p in (out / "samples").iterdir()) == ["step_000004_p0.mp4"]
    (image,) = events.Images("train/sample_p0")
    assert image.step == 4 and (image.width, image.height) == (3 * 64, 64)


def test_wandb_gets_the_same_numbers_and_a_resume_continues_the_run(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw))
        return Run()

    fake = types.ModuleType("wandb")
    fake.init = init
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    assert train(out, "--log-to", "wandb", "--wandb-project", "proj") == 0
    (_, first), *_ = [c for c in calls if c[0] == "init"]
    assert first["project"] == "proj" and first["id"] == "abc123" and first["resume"] == "allow"
    logs = [c for c in calls if c[0] == "log"]
    assert [s for _, s, _ in logs] == [2, 4]
    assert logs[0][2]["train/loss"] == pytest.approx(jsonl(out)[0]["loss"], rel=1e-6)
    assert calls[-1] == ("finish",)
    # resumed (more steps): the stored id, so one W&B run covers the whole training
    fake.util.generate_id = lambda: "other"
    calls.clear()
    assert cli.main(["train", "--config", "tiny", "--out", str(out), "--steps", "6", "--log-every", "2",
                     "--save-every", "2", "--no-progress", "--kernel-backend", "torch", "--synthetic-clips", "4",
                     "--batch", "2", "--log-to", "wandb", "--resume"]) == 0
    assert [c for c in calls if c[0] == "init"][0][1]["id"] == "abc123"
    assert [c[1] for c in calls if c[0] == "log"] == [6]


def test_missing_logger_package_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of it fails
    out = tmp_path / "run"
    assert train(out, "--log-to", "wandb") == 2
    err = capsys.readouterr().err.strip()
    assert "wandb" in err and "pip install" in err and len(err.splitlines()) == 1
    assert not (out / "checkpoints").exists()
