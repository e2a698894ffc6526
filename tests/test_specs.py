"""`cosmos sample --spec`: the official inference JSON of every mode, one video per entry, a bad entry
failing alone, and the sidecar JSON that makes a video again (cosmos_models.sampling.specs, .record)."""
import json
import os

import numpy as np
import pytest
import torch

from cosmos_models import cli
from cosmos_models.data.video_io import read_video, write_video
from cosmos_models.sampling import record
from cosmos_models.sampling.specs import CAMERAS, SampleSpec, SpecError, read_specs
from cosmos_models.nets.tiny_text_encoder import make_tiny_text_encoder
from tests.helpers import record_written_videos

pytest.importorskip("transformers")
cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed (the image input is a .png)")


def moving_square(frames, size=64):
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    video = torch.stack([x, y, x * y])[:, None].repeat(1, frames, 1, 1) * 0.5
    for t in range(frames):
        video[:, t, 10 + 2 * t: 30 + 2 * t, 16:40] = 0.9
    return video


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("reason1-tiny"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Inputs beside the spec files, named relatively as the official assets are."""
    root = tmp_path_factory.mktemp("assets")
    cv2.imwrite(str(root / "first.png"), np.full((64, 64, 3), 128, np.uint8))
    write_video(root / "clip.mp4", moving_square(9), 16)
    write_video(root / "depth.mp4", torch.rand(3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1, 16)
    (root / "cube.txt").write_text("a robot arm picks up the red cube\n")
    torch.save(torch.randn(16, 7, generator=torch.Generator().manual_seed(0)), root / "actions.pt")
    return root


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("COSMOS_EMBEDDING_CACHE", str(tmp_path / "emb-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.delenv("COSMOS_TEXT_ENCODER", raising=False)


def spec(folder, name, body):
    path = folder / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


def sample(*argv, encoder=None):
    common = ["--steps", "2", "--no-progress", "--device", "cpu"] + (["--text-encoder", encoder] if encoder else [])
    return cli.main(["sample", *argv, *common])


def test_predict_batch_form_runs_every_entry(assets, encoder_dir, tmp_path, capsys):
    base = {"inference_type": "image2world", "seed": 3, "guidance": 2, "num_output_frames": 9,
            "samples": {"cube": {"prompt_path": "cube.txt", "input_path": "first.png"},
                        "clip": {"prompt": "a blue car", "input_path": "clip.mp4",
                                 "inference_type": "video2world"}}}
    path = spec(assets, "i2w.json", base)
    entries = read_specs(path)
    assert [e.name for e in entries] == ["cube", "clip"]
    cube, clip = entries
    assert cube.settings["prompt"] == "a robot arm picks up the red cube"  # read from prompt_path, stripped
    assert cube.settings["image"] == [str(assets / "first.png")] and clip.settings["video"] == [str(assets / "clip.mp4")]
    assert cube.settings["seed"] == 3 and cube.settings["frames"] == 9 and cube.settings["mode"] == "image2world"
    assert clip.settings["mode"] == "video2world"  # an entry's own field over the batch's

    out = tmp_path / "out"
    assert sample("--config", "tiny", "--spec", path, "--out", str(out), encoder=encoder_dir) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 spec entries written" in printed
    for name in ("cube", "clip"):
        assert read_video(out / f"{name}.mp4")[0].shape == (3, 9, 64, 64)
        rec = json.loads((out / f"{name}.json").read_text())
        assert rec["seed"] == 3 and rec["guidance"] == 2 and rec["steps"] == 2
        assert rec["inputs_sha256"] and all(len(v) == 64 for v in rec["inputs_sha256"].values())
        assert rec["versions"]["torch"] == torch.__version__ and rec["config"] == "tiny"
    # the mode follows each entry's input: a text2world batch has no input
    t2w = spec(assets, "t2w.json", {"inference_type": "text2world", "samples": {"a": {"prompt": "a red cube"}}})
    assert sample("--config", "tiny", "--spec", t2w, "--out", str(tmp_path / "t2w"), encoder=encoder_dir) == 0
    assert json.loads((tmp_path / "t2w" / "a.json").read_text())["mode"] == "text2world"


def test_transfer_multiview_and_action_entries(assets, encoder_dir, tmp_path, capsys):
    transfer = spec(assets, "transfer.jsonl", "\n".join(json.dumps(e) for e in (
        {"name": "edge", "prompt": "a red cube", "video_path": "clip.mp4", "edge": {"control_weight": 0.5,
                                                                                     "preset_edge_threshold": "low"}},
        {"name": "multi", "prompt": "a red cube", "video_path": "clip.mp4", "seed": 5,
         "depth": {"control_path": "depth.mp4", "control_weight": 0.7}, "vis": {"control_weight": 0.3}},
    )))
    out = tmp_path / "transfer"
    assert sample("--config", "tiny-transfer", "--spec", transfer, "--out", str(out), encoder=encoder_dir) == 0
    rec = json.loads((out / "multi.json").read_text())
    assert rec["mode"] == "transfer" and rec["seed"] == 5
    assert [(c["modality"], c["weight"]) for c in rec["control"]] == [("vis", 0.3), ("depth", 0.7)]  # the official block order
    assert rec["control_video"] == {"depth": str(assets / "depth.mp4")}
    assert json.loads((out / "edge.json").read_text())["edge_preset"] == "low"

    views = ("front_wide", "rear", "cross_left")
    multiview = spec(assets, "multiview.json", {"prompt": "a road", "n_views": 3, "num_input_frames": 1, "guidance": 0,
                                                 **{v: {"video_path": "clip.mp4"} for v in views}})
    (entry,) = read_specs(multiview)
    assert entry.settings["view_indices"] == [CAMERAS[v] for v in sorted(views, key=CAMERAS.get)]
    assert entry.settings["view_indices"] == [0, 3, 5]
    out = tmp_path / "multiview"
    assert sample("--config", "tiny-multiview", "--spec", multiview, "--out", str(out), encoder=encoder_dir) == 0
    assert sorted(f for f in os.listdir(out) if f.endswith(".mp4")) == [f"sample_00000_view{i}.mp4" for i in range(3)]
    assert json.loads((out / "sample_00000.json").read_text())["view_indices"] == [0, 3, 5]

    action = spec(assets, "action.json", [{"name": "push", "prompt": "a robot arm", "image": "first.png",
                                           "actions": "actions.pt", "guidance": 0}])
    assert sample("--config", "tiny-action", "--spec", action, "--out", str(tmp_path / "action"),
                  encoder=encoder_dir) == 0
    assert read_video(tmp_path / "action" / "push.mp4")[0].shape[1] == 17


def test_bad_entries_fail_alone_and_the_exit_code_counts_them(assets, encoder_dir, tmp_path, capsys):
    path = spec(assets, "mixed.jsonl", "\n".join([
        json.dumps({"name": "good", "prompt": "a red cube", "guidance": 0}),
        json.dumps({"name": "typo", "prompt": "a red cube", "sed": 3}),
        "not json",
        json.dumps({"name": "missing", "prompt": "a red cube", "input_path": "nowhere.png"}),
        json.dumps({"name": "seed", "prompt": "a red cube", "seed": "one"}),
        json.dumps({"name": "sam", "prompt": "a red cube", "video_path": "clip.mp4", "edge": {"mask_prompt": "car"}}),
        json.dumps({"name": "noprompt"}),
        json.dumps({"name": "big", "prompt": "a red cube", "height": 60}),  # fails when run (not a multiple of 16)
        json.dumps({"name": "good", "prompt": "again"}),
    ]))
    entries = read_specs(path)
    assert isinstance(entries[0], SpecError) and isinstance(entries[8], SpecError)  # 'good' names two entries
    assert isinstance(entries[7], SampleSpec)  # 'big' reads well; it fails when it runs
    messages = [str(e) for e in entries if isinstance(e, SpecError)]
    for part in ("field 'sed': not a known field", "line 3: not JSON", "field 'input_path': no file at",
                 "field 'seed': must be an integer", "field 'edge.mask_prompt'", "no prompt", "more than one entry"):
        assert any(part in m for m in messages), (part, messages)
    out = tmp_path / "mixed"
    code = sample("--config", "tiny", "--spec", path, "--out", str(out), encoder=encoder_dir)
    captured = capsys.readouterr()
    assert code == 9, captured  # every entry failed, 'big' when it ran
    assert "0 of 9 spec entries written" in captured.out and "mixed.jsonl line 8: height=60" in captured.err
    assert not out.exists() or not [f for f in os.listdir(out) if f.endswith(".mp4")]

    ok = spec(assets, "ok.jsonl", "\n".join([json.dumps({"name": "a", "prompt": "a red cube", "guidance": 0}),
                                             json.dumps({"name": "b", "prompt": "a red cube", "frames": 0})]))
    assert sample("--config", "tiny", "--spec", ok, "--out", str(tmp_path / "ok"), encoder=encoder_dir) == 1
    assert os.path.exists(tmp_path / "ok" / "a.mp4") and not os.path.exists(tmp_path / "ok" / "b.mp4")
    # a file that is not JSON at all, or --out an .mp4, is the command's error (exit 2, one line)
    assert sample("--config", "tiny", "--spec", spec(assets, "broken.json", "{"), "--out", str(tmp_path / "x")) == 2
    assert sample("--config", "tiny", "--spec", ok, "--out", str(tmp_path / "x.mp4")) == 2
    assert "is a folder" in capsys.readouterr().err


def test_sidecar_reproduces_the_video(assets, encoder_dir, tmp_path, capsys, monkeypatch):
    written = record_written_videos(monkeypatch)
    first = tmp_path / "first.mp4"
    assert sample("--config", "tiny", "--prompt", "a red cube", "--image", str(assets / "first.png"), "--seed", "7",
                  "--guidance", "1.5", "--out", str(first), encoder=encoder_dir) == 0
    rec = json.loads(record.sidecar_path(str(first)) and open(record.sidecar_path(str(first))).read())
    again = tmp_path / "again.mp4"
    argv = record.reproduce_command(rec, str(again))
    assert "--prompt" in argv and "--text-encoder" in argv and "--seed" in argv
    assert cli.main(argv) == 0
    assert torch.equal(written[str(first)], written[str(again)])  # the generated videos, bit for bit
    assert np.asarray(read_video(first)[0]).shape == np.asarray(read_video(again)[0]).shape
    assert record.file_digest(str(assets / "first.png")) == rec["inputs_sha256"][str(assets / "first.png")]
