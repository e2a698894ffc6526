"""The sampling pipeline on tiny random models (CPU): modes, conditioning, guidance, chunking, mp4, CLI."""
import math
import os
import warnings

import numpy as np
import pytest
import torch

import cosmos_models as cm
from cosmos_models.nets.config import replace
from cosmos_models import cli
from cosmos_models.sampling import solvers
from cosmos_models.sampling.control import edge_control
from cosmos_models.sampling.sampler import (CONDITION_SIGMA, Sampler, SamplerWarning, latent_chunk_plan, pixel_chunk_plan,
                                   round_up_to_vae_frames)
from cosmos_models.nets.vae import WanVAE
from cosmos_models.data.video_io import read_video, write_video

STEPS = 3


def random_model(config, seed: int = 0) -> torch.nn.Module:
    """A tiny network whose zero-initialized layers (modulation up-projections, control projections)
    are random too, so that every input (text, control, action, view) changes the output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cm.build(config)
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def vae():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return WanVAE.from_config("tiny").eval()


@pytest.fixture(scope="module")
def sampler(vae):
    return Sampler(random_model("tiny"), vae)


def text(cfg, seed: int) -> torch.Tensor:
    return torch.randn(cfg.text_len, cfg.text_channels, generator=torch.Generator().manual_seed(seed))


def moving_square(frames: int, size: int = 64) -> torch.Tensor:
    """(3, T, H, W) in [-1, 1]: a bright square moving over a gradient (it has edges)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    video = torch.stack([x, y, x * y])[:, None].repeat(1, frames, 1, 1) * 0.5
    for t in range(frames):
        video[:, t, 10 + 2 * t: 30 + 2 * t, 16:40] = 0.9
    return video


def run_kw(sampler, **kw):
    cfg = sampler.config
    base = dict(prompt_embedding=text(cfg, 0), negative_prompt_embedding=text(cfg, 1), num_steps=STEPS,
                progress=False)
    return {**base, **kw}


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- basics
def test_text2world_shape_dtype_and_seeds(sampler):
    video = sampler.generate(**run_kw(sampler, seed=3))
    assert video.shape == (3, 9, 64, 64) and video.dtype == torch.float32 and video.device.type == "cpu"
    assert video.min() >= -1 and video.max() <= 1 and torch.isfinite(video).all()
    assert sampler.last_run[0].latents.shape == (1, 16, 3, 8, 8)
    again = sampler.generate(**run_kw(sampler, seed=3))
    other = sampler.generate(**run_kw(sampler, seed=4))
    assert torch.equal(video, again)
    assert rel(other, video) > 1e-3
    g = torch.Generator().manual_seed(3)
    assert torch.equal(sampler.generate(**run_kw(sampler, generator=g)), video)


def test_bf16_model_keeps_fp32_state(vae):
    s = Sampler(random_model("tiny"), vae, dtype=torch.bfloat16)
    assert next(s.model.parameters()).dtype == torch.bfloat16
    latents = s.generate(**run_kw(s, output="latent"))
    assert latents.dtype == torch.float32 and latents.shape == (16, 3, 8, 8) and torch.isfinite(latents).all()


def test_random_embeddings_are_loud_and_seeded(sampler):
    with pytest.warns(SamplerWarning, match="RANDOM"):
        a = sampler.generate(num_steps=2, progress=False, output="latent", seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplerWarning)
        b = sampler.generate(num_steps=2, progress=False, output="latent", seed=5)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- conditioning
class Recorder:
    """Records every network call's inputs (forward pre-hook with kwargs)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x, t, ctx = args
        self.calls.append(dict(x=x.clone(), t=t.clone(), ctx=ctx, **kwargs))

    def close(self):
        self.handle.remove()


def test_image2world_frame_exact_and_network_inputs(sampler, vae):
    image = moving_square(1)[:, 0]
    rec = Recorder(sampler.model)
    try:
        video = sampler.generate("image2world", **run_kw(sampler, image=image))
    finally:
        rec.close()
    cond = vae.encode(image[None, :, None])
    chunk = sampler.last_run[0]
    assert torch.equal(chunk.condition_latents, cond)
    assert torch.equal(chunk.latents[:, :, :1], cond)  # exactly as given, in latent space
    assert video.shape == (3, 9, 64, 64)
    # the network sees: gt on the conditioning frame at every call, the mask channel, timestep 1e-4 there
    # (network units: 1e-4 / 0.001 = 0.1) and trunc(1000·σ) elsewhere; two passes per step (CFG)
    assert len(rec.calls) == 2 * STEPS
    expected_t = solvers.official_timesteps(solvers.flow_sigmas(STEPS)).float()
    for i, call in enumerate(rec.calls):
        assert torch.equal(call["x"][:, :, :1], cond)
        assert call["condition_video_input_mask"].shape == (1, 1, 3, 8, 8)
        assert torch.equal(call["condition_video_input_mask"][0, 0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
        assert torch.allclose(call["t"][0, 0], torch.tensor(CONDITION_SIGMA / 0.001))
        assert torch.equal(call["t"][0, 1:], expected_t[i // 2].expand(2))


def test_video2world_uses_last_frames(sampler, vae):
    clip = moving_square(11)
    for c, frames in ((2, 5), (1, 1)):
        sampler.generate("video2world", **run_kw(sampler, video=clip, num_condition_frames=c))
        chunk = sampler.last_run[0]
        cond = vae.encode(clip[None, :, -frames:])
        assert chunk.condition_latents.shape[2] == c
        assert torch.equal(chunk.condition_latents, cond)
        assert torch.equal(chunk.latents[:, :, :c], cond)


def test_condition_sigma_none_keeps_step_timestep(sampler):
    rec = Recorder(sampler.model)
    try:
        sampler.generate("image2world", **run_kw(sampler, image=moving_square(1)[:, 0], condition_sigma=None,
                                                 guidance_scale=0.0))
    finally:
        rec.close()
    for call in rec.calls:
        assert torch.equal(call["t"][0], call["t"][0, -1].expand(3))


# ----------------------------------------------------------------------------- solver and guidance
def test_euler_converges_to_unipc(sampler):
    kw = run_kw(sampler, guidance_scale=0.0, output="latent", seed=7)
    target = sampler.generate(**{**kw, "num_steps": 60})  # UniPC (the default), second order
    errors = [rel(sampler.generate(**{**kw, "num_steps": n, "solver": "euler"}), target) for n in (8, 32, 128)]
    # first order: each 4x more steps cut the error by about 4
    assert errors[0] > 2.5 * errors[1] > 6 * errors[2], errors
    assert errors[2] < 0.01, errors
    assert rel(sampler.generate(**{**kw, "num_steps": 30}), target) < errors[2]  # UniPC is the better solver


def test_cfg_official_form(sampler):
    cfg = sampler.config
    kw = run_kw(sampler, output="latent", seed=11, num_steps=1, solver="euler")
    rec = Recorder(sampler.model)
    try:
        g0 = sampler.generate(**{**kw, "guidance_scale": 0.0})
        calls_g0 = len(rec.calls)
        g0_other_negative = sampler.generate(**{**kw, "guidance_scale": 0.0, "negative_prompt_embedding": text(cfg, 9)})
        rec.calls.clear()
        g3 = sampler.generate(**{**kw, "guidance_scale": 3.0})
    finally:
        rec.close()
    # g = 0: the conditional pass alone (one network call per step, the negative embedding unused)
    assert calls_g0 == 1 and torch.equal(g0, g0_other_negative)
    # g = 3: one Euler step x = noise − σ0·(cond + 3·(cond − uncond)) from the two recorded passes
    cond_call, uncond_call = rec.calls
    with torch.no_grad():
        cond = sampler.model(cond_call["x"], cond_call["t"], cond_call["ctx"], fps=cfg.fps).float()
        uncond = sampler.model(uncond_call["x"], uncond_call["t"], uncond_call["ctx"], fps=cfg.fps).float()
    noise = torch.randn((1, 16, 3, 8, 8), generator=torch.Generator().manual_seed(11))
    sigma0 = float(solvers.flow_sigmas(1)[0])
    expected = noise - sigma0 * (cond + 3.0 * (cond - uncond))
    assert torch.allclose(g3, expected[0], rtol=1e-5, atol=1e-5)
    assert rel(g3, g0) > 1e-3


# ----------------------------------------------------------------------------- long videos
@pytest.mark.parametrize("total", list(range(2, 40)))
def test_chunk_plans_cover_without_duplicates(total):
    chunk, c = 9, 2
    plan = pixel_chunk_plan(total, chunk, 5 if total > 5 else 0, 5)
    done = 0
    for i, (start, length) in enumerate(plan):
        assert length <= chunk and (length - 1) % 4 == 0
        assert start == (0 if i == 0 else done - 5)
        done = min(start + length, total)
    assert done == total and (len(plan) == 1 or plan[-2][0] + plan[-2][1] < total)
    n = (round_up_to_vae_frames(total) - 1) // 4 + 1
    if n > c:
        lplan = latent_chunk_plan(n, 3, c, c)
        assert lplan[0] == (0, min(3, n)) and sum(l - (c if i else 0) for i, (_, l) in enumerate(lplan)) == n


def test_long_video_latent_chaining(sampler):
    kw = run_kw(sampler, num_frames=21, chunk_conditioning="latent", continuation_frames=2, seed=2)
    video = sampler.generate(**kw)
    assert video.shape == (3, 21, 64, 64)
    chunks = sampler.last_run
    assert [(c.start, c.length) for c in chunks] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    for a, b in zip(chunks, chunks[1:]):  # continuity: chunk k+1 starts with chunk k's last latents
        assert torch.equal(b.latents[:, :, :2], a.latents[:, :, -2:])
        assert torch.equal(b.condition_latents, a.latents[:, :, -2:])
    latents = sampler.generate(**kw, output="latent")
    stitched = torch.cat([chunks[0].latents] + [c.latents[:, :, 2:] for c in chunks[1:]], dim=2)[0]
    assert torch.equal(latents, stitched)
    assert torch.equal(video, sampler.decode(stitched[None])[:, :21])


def test_long_video_pixel_chaining(sampler, vae):
    video = sampler.generate("video2world", **run_kw(sampler, video=moving_square(5), num_frames=15, seed=4))
    assert video.shape == (3, 15, 64, 64)
    chunks = sampler.last_run
    assert [(c.start, c.length) for c in chunks] == [(0, 9), (4, 9), (8, 9)]
    assert torch.equal(video[:, :9], sampler.decode(chunks[0].latents))
    for prev, nxt in zip(chunks, chunks[1:]):
        # chunk k+1 is conditioned on the last 5 frames of what came before, re-encoded, exactly
        border = video[:, nxt.start:nxt.start + 5]
        assert torch.equal(nxt.condition_latents, vae.encode(border[None]))
        assert torch.equal(nxt.latents[:, :, :2], nxt.condition_latents)
        new = sampler.decode(nxt.latents)[:, 5:]
        end = min(nxt.start + 9, 15)
        assert torch.equal(video[:, nxt.start + 5:end], new[:, :end - nxt.start - 5])


def test_mp4_written_at_model_fps(sampler, tmp_path):
    path = tmp_path / "out.mp4"
    assert sampler.generate(**run_kw(sampler, num_frames=13, output=str(path))) == str(path)
    frames, fps = read_video(path)
    assert frames.shape == (3, 13, 64, 64) and fps == pytest.approx(sampler.config.fps)


# ----------------------------------------------------------------------------- transfer, multiview, action
@pytest.fixture(scope="module")
def transfer(vae):
    return Sampler(random_model("tiny-transfer"), vae)


def test_transfer_control_inputs(transfer, vae):
    source = moving_square(9)
    depth = torch.rand(1, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = run_kw(transfer, video=source, control=["edge", "depth"], control_videos={"depth": depth}, seed=1)
    rec = Recorder(transfer.model)
    try:
        out = transfer.generate("transfer", **kw)
    finally:
        rec.close()
    assert out.shape == (3, 9, 64, 64)
    control = rec.calls[0]["control_input"]
    assert set(control) == {"edge", "depth"}
    assert torch.equal(control["edge"], vae.encode(edge_control(source)[None]))
    assert torch.equal(control["depth"], vae.encode(depth.expand(3, -1, -1, -1)[None]))
    # the control reaches the result (compared as latents: decoded pixels of a random VAE may saturate)
    latents = transfer.generate("transfer", **kw, output="latent")
    other = transfer.generate("transfer", **{**kw, "control_videos": {"depth": -depth}}, output="latent")
    assert rel(other, latents) > 1e-3
    # per-modality weights: scalars and a spatial mask (left half only) in pixel space
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1
    weighted = transfer.generate("transfer", **{**kw, "control": {"edge": 0.7, "depth": mask}}, output="latent")
    assert rel(weighted, latents) > 1e-3 and torch.isfinite(weighted).all()
    with pytest.raises(ValueError, match="needs a depth video"):
        transfer.generate("transfer", **{**kw, "control_videos": None})


def test_default_guidance_comes_from_the_config(vae):
    # transfer2.5 samples with guidance 3 (its config's), predict with 7
    assert cm.get_config("transfer2.5-2b").guidance == 3.0 and cm.get_config("predict2.5-2b").guidance == 7.0
    cfg = replace(cm.get_config("tiny-transfer"), name="tiny-transfer-g3", guidance=3.0)
    s = Sampler(random_model(cfg), vae)
    kw = run_kw(s, video=moving_square(9), control=["edge"], output="latent")
    default = s.generate("transfer", **kw)
    assert torch.equal(default, s.generate("transfer", **kw, guidance_scale=3.0))
    assert rel(s.generate("transfer", **kw, guidance_scale=7.0), default) > 1e-3


@pytest.mark.parametrize("chaining", ["pixel", "latent"])
def test_transfer_long_video(transfer, chaining):
    out = transfer.generate("transfer", **run_kw(transfer, video=moving_square(14), control=["blur"], seed=2,
                                                 chunk_conditioning=chaining, guidance_scale=0.0))
    assert out.shape == (3, 14, 64, 64) and len(transfer.last_run) > 1


def test_multiview_per_view(vae):
    s = Sampler(random_model("tiny-multiview"), vae)
    cfg = s.config
    images = [moving_square(3)[:, t] for t in range(3)]
    prompts = torch.stack([text(cfg, v) for v in range(3)])
    out = s.generate("multiview", **run_kw(s, prompt_embedding=prompts, image=images))
    assert out.shape == (3, 3, 5, 64, 64)  # (views, C, frames per view, H, W)
    chunk = s.last_run[0]
    for v, image in enumerate(images):  # each view starts with its own conditioning frame, exactly
        assert torch.equal(chunk.latents[:, :, 2 * v:2 * v + 1], vae.encode(image[None, :, None]))
    swapped = s.generate("multiview", **run_kw(s, prompt_embedding=prompts, image=images[::-1]))
    assert rel(swapped[0], out[0]) > 1e-3
    with pytest.raises(ValueError, match="one image / video per view"):
        s.generate("multiview", **run_kw(s, prompt_embedding=prompts, image=images[:2], num_views=3))


def test_multiview_views_by_camera_name(tmp_path, capsys):
    """--views: the official camera names set the views' camera conditioning and their count; the
    sidecar records the indices; a wrong name, a repeated one or an index the model has no embedding
    for is one clear error."""
    import json
    from cosmos_models.cli.sample import camera_indices

    assert camera_indices(["front_wide", "camera_cross_left_120fov", "camera_rear_tele_30fov"]) == [0, 5, 3]
    with pytest.raises(ValueError, match="not an official camera"):
        camera_indices(["front"])
    with pytest.raises(ValueError, match="named twice"):
        camera_indices(["rear", "camera_rear_tele_30fov"])
    images = []
    for v in range(2):
        path = tmp_path / f"view{v}.mp4"
        write_video(path, moving_square(5), 16.0, codec="mpeg4")
        images.append(str(path))
    out = tmp_path / "mv.mp4"
    common = ["sample", "--mode", "multiview", "--config", "tiny-multiview", "--steps", "1", "--no-progress",
              "--guidance", "0", "--kernel-backend", "torch", "--condition-frames", "1"]
    assert cli.main([*common, "--views", "front_wide", "cross_left", "--video", *images, "--out", str(out)]) == 0
    record = json.loads((tmp_path / "mv.json").read_text())
    assert record["view_indices"] == [0, 5] and record["num_views"] == 2
    assert all(os.path.isfile(p) for p in record["outputs"]) and len(record["outputs"]) == 2
    capsys.readouterr()
    assert cli.main([*common, "--views", "front_wide", "--view-indices", "0", "--video", images[0],
                     "--out", str(out)]) == 2
    assert "--views or --view-indices, not both" in capsys.readouterr().err
    assert cli.main([*common, "--view-indices", "0", "9", "--video", *images, "--out", str(out)]) == 2
    assert "camera indices must be in [0, 7)" in capsys.readouterr().err


def test_action_autoregressive(vae):
    s = Sampler(random_model("tiny-action"), vae)
    first = moving_square(1)[:, 0]
    actions = torch.randn(16, 7, generator=torch.Generator().manual_seed(0))  # 2 chunks of 8
    out = s.generate("action", **run_kw(s, image=first, actions=actions))
    assert out.shape == (3, 17, 64, 64)
    c0, c1 = s.last_run
    assert (c1.start, c1.length) == (8, 9)
    assert torch.equal(c0.condition_latents, vae.encode(first[None, :, None]))
    assert torch.equal(c1.condition_latents, vae.encode(out[None, :, 8:9]))  # the last generated frame
    changed = actions.clone()
    changed[8:] += 1
    other = s.generate("action", **run_kw(s, image=first, actions=changed))
    assert torch.equal(other[:, :9], out[:, :9]) and rel(other[:, 9:], out[:, 9:]) > 1e-3
    with pytest.raises(ValueError, match="actions per chunk"):
        s.generate("action", **run_kw(s, image=first, actions=torch.zeros(10, 7)))


# ----------------------------------------------------------------------------- errors
def test_bad_inputs(sampler, transfer):
    kw = run_kw(sampler)
    with pytest.raises(ValueError, match=r"48x64 \(HxW\).*64x64.*resize=True"):
        sampler.generate("image2world", **kw, image=torch.zeros(3, 48, 64))
    resized = sampler.generate("image2world", **kw, image=torch.zeros(3, 48, 80), resize=True)
    assert resized.shape == (3, 9, 64, 64)
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        sampler.generate(**{**kw, "guidance_scale": -1.0})
    with pytest.raises(ValueError, match="needs image="):
        sampler.generate("image2world", **kw)
    with pytest.raises(ValueError, match="does not fit model tiny"):
        sampler.generate("transfer", **kw, video=moving_square(9))
    with pytest.raises(ValueError, match="multiple of 16"):
        sampler.generate(**kw, height=40, width=64)
    with pytest.raises(ValueError, match="nothing to generate"):
        sampler.generate("video2world", **kw, video=moving_square(9), num_frames=5)
    with pytest.raises(ValueError, match="channels"):
        sampler.generate(**{**kw, "prompt_embedding": torch.zeros(8, 5)})
    with pytest.raises(ValueError, match=".mp4"):
        sampler.generate(**kw, output="video.avi")
    with pytest.raises(ValueError, match="needs a seg video"):
        transfer.generate("transfer", **run_kw(transfer, video=moving_square(9), control=["seg"]))


# ----------------------------------------------------------------------------- the command
def test_cli_end_to_end(tmp_path, capsys):
    model = random_model("tiny")
    ckpt = tmp_path / "ema.safetensors"
    cm.save_checkpoint(model, ckpt)
    emb = tmp_path / "prompt.pt"
    torch.save(text(model.config, 0), emb)
    out = tmp_path / "sample.mp4"
    # the config comes from the checkpoint's metadata
    assert cli.main(["sample", "--checkpoint", str(ckpt), "--prompt-embedding", str(emb), "--steps", "2",
                     "--seed", "3", "--no-progress", "--out", str(out)]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (3, 9, 64, 64)
    assert "text2world with tiny" in capsys.readouterr().out

    image = tmp_path / "first.png"
    import cv2
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    video_out = tmp_path / "long.mp4"
    assert cli.main(["sample", "--config", "tiny", "--checkpoint", str(ckpt), "--image", str(image),
                     "--frames", "13", "--steps", "2", "--guidance", "0", "--no-progress",
                     "--out", str(video_out)]) == 0
    assert read_video(video_out)[0].shape[1] == 13
    printed = capsys.readouterr()
    assert "image2world" in printed.out and "2 chunk(s)" in printed.out
    assert "RANDOMLY INITIALIZED tiny WAN VAE" in printed.err

    assert cli.main(["sample", "--config", "tiny", "--guidance", "-1", "--out", str(out)]) == 2
    assert "guidance must be" in capsys.readouterr().err
    assert cli.main(["sample", "--config", "tiny", "--image", str(tmp_path / "missing.png"), "--out", str(out)]) == 2


def test_cli_transfer_with_given_control(tmp_path, capsys):
    source, depth = tmp_path / "in.mp4", tmp_path / "depth.mp4"
    write_video(source, moving_square(9), 16)
    write_video(depth, torch.rand(3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1, 16)
    out = tmp_path / "transfer.mp4"
    assert cli.main(["sample", "--config", "tiny-transfer", "--video", str(source), "--control", "edge=0.3",
                     "depth=0.7", "--control-video", f"depth={depth}", "--steps", "2", "--no-progress",
                     "--out", str(out)]) == 0
    assert "transfer with tiny-transfer" in capsys.readouterr().out
    assert read_video(out)[0].shape == (3, 9, 64, 64)
    assert cli.main(["sample", "--config", "tiny-transfer", "--video", str(source), "--control", "depth",
                     "--out", str(out)]) == 2
    assert "needs a depth video" in capsys.readouterr().err


def test_cli_random_everything_runs(tmp_path, capsys):
    out = tmp_path / "tiny.mp4"
    assert cli.main(["sample", "--config", "tiny", "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "RANDOMLY INITIALIZED" in err and "RANDOM one" in err
    assert read_video(out)[0].shape == (3, 9, 64, 64)
    assert math.isclose(read_video(out)[1], cm.get_config("tiny").fps)



def test_control_flag_forms():
    from cosmos_models.cli.sample import parse_control
    assert parse_control("edge") == ("edge", None, 1.0, None)
    assert parse_control("edge:0.5") == ("edge", None, 0.5, None)
    assert parse_control("depth=0.7") == ("depth", None, 0.7, None)  # the old MODALITY=WEIGHT form
    assert parse_control("depth=d.pt") == ("depth", "d.pt", 1.0, None)
    assert parse_control("depth=d.pt:0.25:m.mp4") == ("depth", "d.pt", 0.25, "m.mp4")
    assert parse_control("seg:0.5:mask") == ("seg", None, 0.5, "mask")
    with pytest.raises(ValueError, match="is not a number"):
        parse_control("edge=e.pt:lots")


def test_cli_multi_control_one_branch_per_modality_checkpoint(tmp_path, capsys):
    """--control depth=CKPT:WEIGHT:MASK adds that checkpoint's control branch over the --checkpoint
    model's base; the mask comes as a video (white = apply)."""
    edge_model = random_model("tiny-transfer", seed=0)
    depth_model = random_model("tiny-transfer", seed=1)
    depth_model.load_state_dict({k: v for k, v in edge_model.state_dict().items()
                                 if not k.startswith(("control_embedder", "control_blocks"))}, strict=False)
    edge_ckpt, depth_ckpt = tmp_path / "edge.safetensors", tmp_path / "depth.safetensors"
    cm.save_checkpoint(edge_model, edge_ckpt)
    cm.save_checkpoint(depth_model, depth_ckpt)
    source, depth, mask = tmp_path / "in.mp4", tmp_path / "depth.mp4", tmp_path / "mask.mp4"
    write_video(source, moving_square(9), 16)
    write_video(depth, torch.rand(3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1, 16)
    half = -torch.ones(3, 9, 64, 64)
    half[..., :32] = 1
    write_video(mask, half, 16)
    out = tmp_path / "multi.mp4"
    assert cli.main(["sample", "--checkpoint", str(edge_ckpt), "--video", str(source), "--control", "edge:0.8",
                     f"depth={depth_ckpt}:0.6:{mask}", "--control-video", f"depth={depth}", "--steps", "2",
                     "--no-progress", "--out", str(out)]) == 0
    assert read_video(out)[0].shape == (3, 9, 64, 64)
    printed = capsys.readouterr().out
    assert "transfer with tiny-transfer" in printed and "preset tiny-transfer/default" in printed


def test_cli_takes_a_run_folder_and_names_the_preset(tmp_path, capsys):
    from cosmos_models.training.trainer import TrainConfig, Trainer
    run = Trainer(TrainConfig(config="tiny", out=str(tmp_path / "run"), steps=1, save_every=1, log_every=1,
                              progress=False, synthetic_clips=2))
    try:
        run.train()
    finally:
        run.close()
    out = tmp_path / "from_run.mp4"
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "run"), "--steps", "2", "--no-progress",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "step_000001" in printed.out and "read the 'ema' entries" in printed.err
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "run"), "--preset", "predict2.5-2b/post-trained",
                     "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    assert "preset predict2.5-2b/post-trained (from --preset)" in capsys.readouterr().out
