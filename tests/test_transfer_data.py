"""Transfer2.5 training from a folder: given depth / seg control videos found beside each clip (or in
the official DATASET/depth/, DATASET/seg/ folders), decoded at the clip's own times, a missing or
mismatched one skipped with one warning; edge computed from the clip; `cosmos train --control`."""
import json
import os
import shutil
import warnings

import pytest
import torch

from cosmos_models.data import clips as D


def folder_with_depth(root, *, official: bool):
    """Three 17-frame clips with text embeddings; depth videos for a (17 frames), b (17), c (9: mismatched)."""
    videos = root / "videos" if official else root
    made = D.make_synthetic_videos(videos, n=3, frames=17, size=(64, 64), fps=16, text_len=8, text_dim=48)
    depth = D.make_synthetic_videos(root / "tmp", n=2, frames=17, size=(64, 64), fps=16, seed=7)
    short = D.make_synthetic_videos(root / "tmp9", n=1, frames=9, size=(64, 64), fps=16, seed=8)
    for clip, control in zip(made, depth + short):
        name = os.path.basename(clip)
        target = root / "depth" / name if official else videos / name.replace(".mp4", "_depth.mp4")
        target.parent.mkdir(exist_ok=True)
        shutil.move(control, target)
    shutil.rmtree(root / "tmp")
    shutil.rmtree(root / "tmp9")
    return made


@pytest.mark.parametrize("official", [True, False])
def test_given_controls_are_found_decoded_at_the_clip_times_and_checked(tmp_path, official):
    made = folder_with_depth(tmp_path, official=official)
    D._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = D.ClipDataset(tmp_path, num_frames=9, fps=8, resolution=(64, 64), text_len=8, clip_start="center",
                           controls=("depth",))
    # the depth videos are not clips themselves; the one of the wrong length drops its clip
    assert ds.files == sorted(made[:2])
    assert any("has 9 frames but the video 17" in str(w.message) for w in caught)
    item = ds[0]
    depth_path = D.control_video_path(ds.files[0], "depth")
    start = ds.clip_start_time(ds.files[0], 0, 0)
    expected = D.decode_clip(depth_path, 9, 8, (64, 64), start).float() / 127.5 - 1
    assert torch.equal(item["control_video"]["depth"], expected) and item["video"].shape == (3, 9, 64, 64)
    batch = D.collate([ds[0], ds[1]])
    assert batch["control_video"]["depth"].shape == (2, 3, 9, 64, 64)
    with pytest.raises(ValueError, match="edge and blur are computed"):
        D.ClipDataset(tmp_path, num_frames=9, controls=("edge",))


def test_transfer2_5_captions_json_is_a_caption(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "a.json").write_text(json.dumps({"caption": "a robot arm"}))
    assert D.caption_of(str(tmp_path / "videos" / "a.mp4")) == (str(tmp_path / "captions" / "a.json"), "a robot arm")
    assert D.caption_of(str(tmp_path / "videos" / "b.mp4")) is None


def test_cosmos_train_a_transfer_model_with_edge_and_depth(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")  # the tiny WAN VAE encodes clips and controls
    pytest.importorskip("cv2")        # the edge control
    from cosmos_models import cli
    from cosmos_models.nets.transfer import TransferDiT

    seen = []
    original = TransferDiT._control_passes

    def record(self, control_input, control_weights, x):
        seen.append({k: tuple(v.shape) for k, v in control_input.items()})
        return original(self, control_input, control_weights, x)

    monkeypatch.setattr(TransferDiT, "_control_passes", record)

    folder_with_depth(tmp_path / "data", official=True)
    out = tmp_path / "run"
    assert cli.main(["train", "--config", "tiny-transfer", "--data", str(tmp_path / "data"), "--out", str(out),
                     "--control", "edge,depth", "--steps", "1", "--batch", "2", "--no-progress",
                     "--kernel-backend", "torch"]) == 0
    assert seen == [{"edge": (2, 16, 3, 8, 8), "depth": (2, 16, 3, 8, 8)}]  # both, as latents of the clips' shape
    assert json.loads((out / "run.json").read_text())["identity"]["control"] == "edge,depth"
    assert os.path.isfile(out / "ema.safetensors")
    assert cli.main(["train", "--config", "tiny-transfer", "--data", str(tmp_path / "data"), "--out",
                     str(tmp_path / "bad"), "--control", "canny", "--steps", "1", "--no-progress"]) == 2
    assert cli.main(["train", "--config", "tiny", "--out", str(tmp_path / "bad2"), "--control", "edge",
                     "--steps", "1", "--no-progress"]) == 2
