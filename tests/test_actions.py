"""Actions of the action-conditioned model from official annotation JSONs (cosmos_models/data/actions.py):
the relative-pose formula, validation, the actions of a resampled clip, training and sampling from files."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

from cosmos_models.data import actions as A
from cosmos_models.data import clips as D


def annotation(path, frames: int, seed: int = 0, **override):
    g = np.random.default_rng(seed)
    data = {"state": np.cumsum(g.normal(scale=0.05, size=(frames, 6)), 0).tolist(),
            "continuous_gripper_state": (g.random(frames) > 0.5).astype(float).tolist()}
    data.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


def test_euler_round_trip_and_the_relative_pose():
    rpy = np.random.default_rng(0).uniform(-1.2, 1.2, size=(50, 3))
    m = A.euler_to_matrix(rpy)
    assert np.allclose(m @ np.swapaxes(m, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(A.matrix_to_euler(m), rpy, atol=1e-10)
    # facing +y (yaw 90°), moving +y in the world = forward (+x) in the gripper's own frame; turning by 0.1
    states = np.array([[0, 0, 0, 0, 0, math.pi / 2], [0, 1, 0, 0, 0, math.pi / 2 + 0.1]])
    act = A.actions_from_states(states, np.array([0.0, 1.0]))
    assert np.allclose(act, [[20, 0, 0, 0, 0, 2.0, 1.0]], atol=1e-9)


def test_annotation_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "a.json"
    annotation(path, 5, continuous_gripper_state=[0.0] * 4)
    with pytest.raises(A.ActionFileError, match='"state" has 5 frames but "continuous_gripper_state" 4'):
        A.Annotation(path)
    annotation(path, 5, state=[[0.0] * 5] * 5)
    with pytest.raises(A.ActionFileError, match=r"a.json: 'state' has shape \(5, 5\); expected \(T, 6\)"):
        A.Annotation(path)
    annotation(path, 5, state=[[float("nan")] * 6] * 5)
    with pytest.raises(A.ActionFileError, match="NaN or Inf"):
        A.Annotation(path)
    path.write_text(json.dumps({"texts": ["x"]}))
    with pytest.raises(A.ActionFileError, match="no \"state\""):
        A.Annotation(path)
    path.write_text("{not json")
    with pytest.raises(A.ActionFileError, match="cannot read it as JSON"):
        A.Annotation(path)
    given = {"action": np.arange(21.0).reshape(3, 7).tolist()}
    path.write_text(json.dumps(given))
    assert torch.equal(A.Annotation(path).clip_actions([0, 2]), torch.tensor([given["action"][0]], dtype=torch.float32))


def test_clips_get_the_actions_between_their_frames(tmp_path):
    """16 fps videos read at 8 fps: a clip shows every second frame and gets the actions between
    those frames; a video whose annotation is shorter than it is skipped with one warning."""
    root = tmp_path / "data"
    made = D.make_synthetic_videos(root / "videos", n=3, frames=17, size=(64, 64), fps=16, text_len=8, text_dim=48)
    names = [os.path.splitext(os.path.basename(p))[0] for p in made]
    data = annotation(root / "annotations" / f"{names[0]}.json", 17, seed=1)
    annotation(root / "videos" / f"{names[1]}.json", 17, seed=2)  # beside the video works too
    annotation(root / "annotations" / f"{names[2]}.json", 10, seed=3)  # shorter than its video
    D._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = D.ClipDataset(root, num_frames=9, fps=8, resolution=(64, 64), text_len=8, clip_start="start",
                           with_actions=True)
    assert [os.path.basename(f) for f in ds.files] == [f"{n}.mp4" for n in names[:2]]
    assert any("has 10 frames but the video 17" in str(w.message) for w in caught)
    item = ds[0]
    states, gripper = np.array(data["state"]), np.array(data["continuous_gripper_state"])
    expected = A.actions_from_states(states[::2][:9], gripper[::2][:9])
    assert item["action"].shape == (8, 7) and np.allclose(item["action"].numpy(), expected, atol=1e-5)
    batch = D.collate([ds[0], ds[1]])
    assert batch["action"].shape == (2, 8, 7)


def test_train_and_sample_an_action_model_from_annotation_files(tmp_path, capsys):
    pytest.importorskip("diffusers")  # the tiny WAN VAE encodes the clips
    from cosmos_models import cli

    root = tmp_path / "data"
    made = D.make_synthetic_videos(root / "videos", n=2, frames=9, size=(64, 64), fps=16, text_len=8, text_dim=48)
    for path in made:
        annotation(root / "annotations" / (os.path.splitext(os.path.basename(path))[0] + ".json"), 9)
    out = tmp_path / "run"
    assert cli.main(["train", "--config", "tiny-action", "--data", str(root), "--out", str(out), "--steps", "1",
                     "--batch", "2", "--no-progress", "--kernel-backend", "torch"]) == 0
    assert os.path.isfile(out / "ema.safetensors")
    # sampling: 18 frames of an episode give 17 actions, 2 whole chunks of 8 are used (a note says so)
    annotation(tmp_path / "episode.json", 18, seed=5)
    video = tmp_path / "out.mp4"
    capsys.readouterr()
    assert cli.main(["sample", "--mode", "action", "--config", "tiny-action", "--checkpoint", str(out / "ema.safetensors"),
                     "--image", str(made[0]), "--actions", str(tmp_path / "episode.json"), "--steps", "1",
                     "--out", str(video), "--no-progress", "--kernel-backend", "torch", "--seed", "0"]) == 0
    assert os.path.isfile(video)
    assert "used the first 16 of its 17 actions" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"state": [[0.0] * 6] * 3}))
    assert cli.main(["sample", "--mode", "action", "--config", "tiny-action", "--image", str(made[0]),
                     "--actions", str(tmp_path / "bad.json"), "--steps", "1", "--out", str(tmp_path / "x.mp4"),
                     "--no-progress"]) == 2
    assert "continuous_gripper_state" in capsys.readouterr().err
