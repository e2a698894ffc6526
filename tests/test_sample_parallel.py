"""Sampling on several processes (cosmos_models.sampling.parallel): 2 gloo ranks on the CPU, as torchrun
would start them. Context parallel gives the single-process video; batch mode deals entries out."""
import json
import os

import numpy as np
import torch

import cosmos_models as cm
from cosmos_models.nets.vae import WanVAE
from cosmos_models.sampling.sampler import Sampler
from helpers import run_ranks


def _model(name):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cm.build(name)
        with torch.no_grad():
            for p in model.parameters():  # the zero-initialized projections random too: every input counts
                if not p.any():
                    p.normal_(0, 0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = WanVAE.from_config("tiny").eval()
    return model, vae


def _generate(name, context_parallel):
    import torch.distributed as dist

    model, vae = _model(name)
    if context_parallel:
        dist.init_process_group("gloo")
        model.set_context_parallel_group(dist.group.WORLD)
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    text = torch.randn(cfg.text_len, cfg.text_channels, generator=g)
    negative = torch.randn(cfg.text_len, cfg.text_channels, generator=g)
    kw = dict(prompt_embedding=text, negative_prompt_embedding=negative, num_steps=3, guidance_scale=2.0, seed=3,
              progress=False)
    if cfg.variant == "multiview":
        image = torch.rand(3, 64, 64, generator=g) * 2 - 1
        out = Sampler(model, vae).generate("multiview", image=[image, -image], num_views=2, **kw)
    else:
        out = Sampler(model, vae).generate("text2world", num_frames=5, **kw)  # 2 latent frames: 1 per rank
    if context_parallel:
        dist.destroy_process_group()
    return out.numpy()  # by value (a tensor through the queue would be shared memory of an exited process)


def test_context_parallel_sampling_equals_one_process():
    for name in ("tiny", "tiny-multiview"):
        single = torch.from_numpy(_generate(name, False))
        ranks = run_ranks(_generate, name, True)
        for rank, out in ranks.items():
            out = torch.from_numpy(out)
            assert out.shape == single.shape and torch.isfinite(out).all()
            err = float((out - single).norm() / single.norm())
            assert err < 1e-5, (name, rank, err)


def _cli(argv):
    from cosmos_models import cli

    return cli.main(argv)


def test_torchrun_cli_context_and_batch(tmp_path):
    from cosmos_models.data.video_io import read_video

    emb = tmp_path / "e.pt"
    torch.save(torch.randn(8, 48, generator=torch.Generator().manual_seed(0)), emb)
    common = ["sample", "--config", "tiny", "--prompt-embedding", str(emb), "--negative-prompt-embedding", str(emb),
              "--frames", "5", "--steps", "2", "--no-progress", "--device", "cpu"]
    single = tmp_path / "single.mp4"
    assert _cli([*common, "--out", str(single)]) == 0
    cp = tmp_path / "cp.mp4"
    assert run_ranks(_cli, [*common, "--out", str(cp)]) == {0: 0, 1: 0}
    a, b = (np.asarray(read_video(p)[0]) for p in (single, cp))
    assert a.shape == b.shape and np.abs(a - b).max() <= 2 * 2 / 255  # the same video (mp4 levels apart at most)
    assert json.loads((tmp_path / "cp.json").read_text())["ranks"] == 2

    # the frames per chunk must divide over the ranks: said in one line by every rank
    nine = [a for a in common if a not in ("--frames", "5")]  # the config's 9 frames: 3 latent frames
    assert run_ranks(_cli, [*nine, "--out", str(tmp_path / "odd.mp4")]) == {0: 2, 1: 2}

    spec = tmp_path / "batch.jsonl"
    spec.write_text("\n".join(json.dumps(e) for e in (
        {"name": "a", "prompt_embedding": str(emb)}, {"name": "b", "prompt_embedding": str(emb), "height": 60},
        {"name": "c", "prompt_embedding": str(emb), "seed": 2}, {"name": "d"})) + "\n")
    out = tmp_path / "batch"
    codes = run_ranks(_cli, [*common, "--spec", str(spec), "--parallel", "batch", "--out", str(out)])
    assert codes == {0: 2, 1: 2}  # 'd' has no prompt, 'b' fails on the rank that runs it
    assert sorted(f for f in os.listdir(out) if f.endswith(".mp4")) == ["a.mp4", "c.mp4"]
    assert {json.loads((out / f"{n}.json").read_text())["parallel"] for n in "ac"} == {"batch"}
