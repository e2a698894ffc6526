"""The README's first command, run as written (its `cosmos` parts, in this process): it must end in a
video that shows the generated clips' moving shapes, not noise. Numbers, not a look: the Text2World
sample of a clip's caption is far closer to that clip than to any other clip of the set, and the
Image2World continuation of a clip from its first frame is closer to the clip's true frames than
repeating that frame is. (The clip set is memorized: 600 CPU steps teach a 1M-parameter DiT these
eight clips, not motion in general; held-out clips are not continued better than by repetition.)"""
import os
import re
import shlex
from pathlib import Path

import pytest
import torch

import cosmos_models as cm
from cosmos_models import cli
from cosmos_models.data.video_io import read_video
from cosmos_models.nets.vae import WanVAE
from cosmos_models.sampling.sampler import Sampler

README = Path(__file__).resolve().parent.parent / "README.md"


def first_command() -> list[list[str]]:
    """The `cosmos ...` steps of the README's first line of code."""
    line = re.search(r"```bash\n(.*?)\n", README.read_text()).group(1)
    return [shlex.split(part)[1:] for part in line.split("&&") if part.strip().startswith("cosmos ")]


def mse(a, b) -> float:
    return float((a - b).square().mean())


def test_the_first_command_ends_in_the_moving_shapes(tmp_path, monkeypatch):
    pytest.importorskip("av")
    monkeypatch.chdir(tmp_path)
    steps = first_command()
    assert [s[0] for s in steps] == ["train", "sample"]
    for argv in steps:
        assert cli.main([*argv, "--no-progress"]) == 0, argv
    run = Path(dict(zip(steps[0], steps[0][1:]))["--out"])
    clips = sorted(run.glob("data/*.mp4"))
    truth = [read_video(p)[0][:, :9] for p in clips]
    sample, _ = read_video(dict(zip(steps[1], steps[1][1:]))["--out"])
    own = mse(sample, truth[0])
    others = [mse(sample, t) for t in truth[1:]]
    assert own < 0.5 * min(others), (own, others)  # clip 0's shapes where clip 0 has them

    config = dict(zip(steps[0], steps[0][1:]))["--config"]
    model = cm.build(config)
    cm.load_checkpoint(model, str(run / "ema.safetensors"))
    sampler = Sampler(model, WanVAE.load(str(run / "vae")))
    for path, video in list(zip(clips, truth))[1:4]:
        text = torch.load(os.path.splitext(path)[0] + ".pt")
        out = sampler.generate("image2world", image=video[:, 0], prompt_embedding=text, seed=0, progress=False)
        moved, repeated = mse(out[:, 1:], video[:, 1:]), mse(video[:, :1].expand_as(video[:, 1:]), video[:, 1:])
        assert moved < 0.7 * repeated, (path.name, moved, repeated)
