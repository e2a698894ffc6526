"""The trainer: SAC policies, schedule and EMA, overfitting one batch, FSDP2 and context parallelism
over real gloo process groups (forked ranks and torchrun) against one process, exact resume after
a crash, atomic checkpoints, joint image/video batches with CP off for images, the CLI's tiny run.

Every run trains the tiny config on 64x64, 5-frame clips (2 latent frames, so CP 2 splits them) with
cached latents generated once per module."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import cosmos_models as cm
from cosmos_models.data import prepare as train_data
from cosmos_models.training import checkpointing, sac
from cosmos_models.training.ema import EMA, power_exponent
from cosmos_models.training.trainer import TrainConfig, Trainer, lr_factor, resolve
from tests import helpers
from tests.helpers import assert_curves_close

FRAMES = 5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    train_data.prepare_synthetic(str(root / "data"), cm.get_config("tiny"), num_frames=FRAMES, size=(64, 64),
                                 clips=4, vae_dir=str(root / "vae"), device=torch.device("cpu"))
    return str(root / "data")


def config(out, data, **changes) -> TrainConfig:
    base = dict(config="tiny", out=str(out), data=data, frames=FRAMES, steps=4, batch=2, log_every=1,
                save_every=0, lr=3e-3, warmup=2, kernel_backend="torch", progress=False, dist_timeout=60.0)
    base.update(changes)
    return TrainConfig(**base)


def run_in_process(cfg: TrainConfig):
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def run_forked(cfg: TrainConfig, world: int = 2) -> dict[int, list]:
    """Run `cfg` on `world` ranks of a gloo group; {rank: [(step, loss)]}."""
    return helpers.run_ranks(run_in_process, cfg, world=world)


# ------------------------------------------------------------------------------------------ SAC
def _sac_grads(policy):
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[func] = self.calls.get(func, 0) + 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = cm.build("tiny")
    with torch.no_grad():  # non-zero modulation, so every op matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    wrapped = sac.apply(model, policy)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 16, 2, 4, 4, generator=g), 1000 * torch.rand(2, 2, generator=g)
    ctx = torch.randn(2, 8, 48, generator=g)
    out = model(x, t, ctx)
    counter = CountOps()
    with counter:
        out.square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters()}, counter.calls, wrapped


def test_sac_policies_give_the_same_gradients_and_recompute_what_they_say():
    reference, calls_plain, wrapped = _sac_grads("none")
    assert wrapped == 0
    flash = torch.ops.cosmos_kernels.flash_attention.default
    mm = torch.ops.aten.mm.default
    assert calls_plain.get(flash, 0) == 0
    blocks = cm.get_config("tiny").num_blocks
    # per block: attention kernels recomputed in the backward, matmuls recomputed (of 16: 6 modulation,
    # 4 self-attention, 4 cross-attention, 2 MLP)
    expected = {"full": (2, 16), "predict2_2b_720_aggressive": (0, 16), "predict2_2b_720": (1, 9),
                "predict2_14b_720_aggressive": (2, 13), "mm_only": (2, 0), "linear_selfattn": (1, 0)}
    for policy, (attn, mms) in expected.items():
        grads, calls, wrapped = _sac_grads(policy)
        assert wrapped == blocks
        for name, g in reference.items():
            assert torch.equal(grads[name], g), (policy, name)
        assert calls.get(flash, 0) == attn * blocks, (policy, calls.get(flash, 0))
        assert calls.get(mm, 0) - calls_plain[mm] == mms * blocks, (policy, calls.get(mm, 0))


def test_sac_rejects_unknown_policy_and_double_application():
    model = cm.build("tiny")
    with pytest.raises(ValueError, match="checkpointing policy 'bogus'"):
        sac.apply(model, "bogus")
    sac.apply(model, "full")
    with pytest.raises(ValueError, match="already checkpointed"):
        sac.apply(model, "full")


# ------------------------------------------------------------------------------------------ schedule, EMA
def test_lr_schedule_warms_up_then_decays_linearly():
    f = [lr_factor(s, 4, 12, 0.1) for s in range(12)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and abs(f[8] - 0.55) < 1e-12 and abs(lr_factor(12, 4, 12, 0.1) - 0.1) < 1e-12
    assert all(a >= b for a, b in zip(f[3:], f[4:]))


def test_power_ema_matches_its_formula():
    gamma = power_exponent(0.1)
    assert abs(gamma ** 3 + 7 * gamma ** 2 + (16 - 100) * gamma + (12 - 100)) < 1e-6 and abs(gamma - 6.94) < 0.01
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, sigma_rel=0.1)
    history, expected = [], None
    for i in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        beta = ema.update(model)
        assert beta == (0.0 if i == 0 else (1 - 1 / (i + 1)) ** (gamma + 1))
        w = model.weight.detach().clone()
        expected = w if expected is None else beta * expected + (1 - beta) * w
        history.append(beta)
    torch.testing.assert_close(ema.shadow["weight"], expected)
    constant = EMA(model, sigma_rel=None, decay=0.9999)
    assert constant.beta(0) == 0.1 and constant.beta(10 ** 6) == 0.9999
    with pytest.raises(ValueError):
        EMA(model, sigma_rel=0.1, decay=0.99)


def test_resolve_validates_the_run():
    with pytest.raises(ValueError, match="--cp 2 must divide the 3 latent frames"):
        resolve(TrainConfig(frames=9, cp=2), "cpu")
    with pytest.raises(ValueError, match="--cp 2 x --cp-overlap-chunks 2 must divide the 2 attention heads"):
        resolve(TrainConfig(frames=13, cp=2, cp_overlap_chunks=2), "cpu")
    with pytest.raises(ValueError, match="--cp-overlap-chunks must be an int >= 1, got 0"):
        resolve(TrainConfig(cp_overlap_chunks=0), "cpu")
    with pytest.raises(ValueError, match="--data is required"):
        resolve(TrainConfig(config="predict2.5-2b"), "cpu")
    with pytest.raises(ValueError, match="multiples of 16"):
        resolve(TrainConfig(resolution="72x64"), "cpu")
    r = resolve(TrainConfig(steps=20), "cpu")
    assert (r.size, r.frames, r.latent_t, r.warmup, r.sac, r.precision) == ((64, 64), 9, 3, 4, "none", "fp32")
    assert resolve(TrainConfig(config="predict2.5-2b", data="x", steps=10 ** 5), "cuda").warmup == 2000


# ------------------------------------------------------------------------------------------ training
def test_tiny_model_overfits_one_batch(tmp_path, clips):
    losses = run_in_process(config(tmp_path / "run", clips, steps=50, batch=1, overfit_batch=True, grad_clip=0.0,
                                   final_lr_ratio=1.0, text_dropout=0.0, warmup=5))
    values = [x for _, x in losses]
    assert values[-1] < values[0] / 10, values


def test_two_processes_fsdp_and_context_parallel_match_one_process(tmp_path, clips):
    """Same global batch (2 clips): 1 process x 2, FSDP over 2 ranks x 1, and CP 2 (both ranks the
    same 2 clips, the sequence split; with SAC). Joint image/video steps: the CP run's image batches
    run with CP off (one latent frame cannot be split), its 2 images split over the 2 ranks."""
    common = dict(steps=5, image_prob=0.5, seed=6)  # steps 1 and 5 are image batches
    # batches are per data-parallel group: 2 groups of 1 clip (FSDP), 1 group of 2 (single, CP)
    single = run_in_process(config(tmp_path / "one", clips, batch=2, image_batch=2, **common))
    fsdp = run_forked(config(tmp_path / "fsdp", clips, batch=1, image_batch=1, **common))
    cp = run_forked(config(tmp_path / "cp", clips, batch=2, image_batch=2, cp=2, sac="predict2_2b_720_aggressive",
                           **common))
    hsdp = run_forked(config(tmp_path / "hsdp", clips, batch=1, image_batch=1, hsdp_replicate=2, steps=2,
                             image_prob=0.5, seed=6))
    with open(tmp_path / "cp" / "train_log.jsonl") as f:
        kinds = {json.loads(line)["kind"] for line in f}
    assert kinds == {"image", "video"}, kinds  # both kinds of step happened
    for run in (fsdp, cp, hsdp):
        assert run[0] == run[1]  # every rank logs the same all-reduced loss
        assert_curves_close(run[0], single[:len(run[0])])


def test_context_parallel_online_encoding_and_image_batch_smaller_than_the_group(tmp_path):
    """Clips without cached latents: under CP 2 the group's cp rank 0 encodes the video and broadcasts
    the latents; one image per group: both ranks compute it with CP off, its gradient counted once."""
    from cosmos_models.data.clips import make_synthetic_videos
    raw = tmp_path / "raw"
    make_synthetic_videos(raw, n=2, frames=12, size=(64, 64), text_len=8, text_dim=48)
    common = dict(steps=3, image_prob=0.5, batch=1, image_batch=1, seed=0)  # step 3 is an image batch
    single = run_in_process(config(tmp_path / "one", str(raw), **common))
    cp = run_forked(config(tmp_path / "cp", str(raw), cp=2, **common))
    assert cp[0] == cp[1]
    assert_curves_close(cp[0], single)
    assert not list(raw.glob("*.latent.pt"))  # nothing was cached: every step encoded online


def test_aspect_buckets_train_landscape_and_square_clips_at_their_own_sizes(tmp_path):
    """--aspect-buckets: 2:1 and square clips are encoded at their bucket's size; the logged tokens of
    each step are those of one bucket's latent grid."""
    pytest.importorskip("diffusers")
    from cosmos_models.data.clips import aspect_buckets, make_synthetic_videos
    raw = tmp_path / "raw"
    make_synthetic_videos(raw / "wide", n=2, frames=12, size=(48, 96), text_len=8, text_dim=48, seed=1)
    make_synthetic_videos(raw / "square", n=2, frames=12, size=(64, 64), text_len=8, text_dim=48, seed=2)
    run_in_process(config(tmp_path / "run", str(raw), steps=2, batch=2, resolution="64x64", aspect_buckets=True))
    with open(tmp_path / "run" / "train_log.jsonl") as f:
        tokens = {round(r["tokens_per_s"] * r["step_time_s"]) for r in map(json.loads, f)}
    table = aspect_buckets("64x64")
    grid = {key: (FRAMES - 1) // 4 + 1 for key in table}
    expected = {2 * grid[k] * (table[k][0] // 16) * (table[k][1] // 16) for k in ("16,9", "1,1")}
    assert tokens == expected, (tokens, expected)
    with open(tmp_path / "run" / "run.json") as f:
        assert json.load(f)["identity"]["aspect_buckets"] is True


def test_kill_and_resume_continues_bit_identically(tmp_path, clips, monkeypatch):
    common = dict(steps=6, save_every=3, batch=1, image_prob=0.5, image_batch=1, text_dropout=0.5, seed=6)
    reference = Trainer(config(tmp_path / "uninterrupted", clips, **common))
    try:
        expected = reference.train()
        expected_ema = {k: v.full_tensor().clone() for k, v in reference.ema.shadow.items()}
        expected_weights = {k: v.full_tensor().clone() for k, v in reference.model.state_dict().items()}
    finally:
        reference.close()

    original_step = Trainer.train_step

    def crash_after_step_4(self):
        if self.step == 4:
            raise KeyboardInterrupt("killed")
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(config(tmp_path / "killed", clips, **common))
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert os.path.basename(checkpointing.find_latest(str(tmp_path / "killed" / "checkpoints"))) == "step_000003"

    resumed = Trainer(config(tmp_path / "killed", clips, resume=True, **common))
    try:
        after = resumed.train()
        assert after == expected[3:]  # steps 4..6, bit for bit
        for k, v in resumed.ema.shadow.items():
            assert torch.equal(v.full_tensor(), expected_ema[k]), k
        for k, v in resumed.model.state_dict().items():
            assert torch.equal(v.full_tensor(), expected_weights[k]), k
    finally:
        resumed.close()
    exported = cm.build("tiny")
    cm.load_checkpoint(exported, str(tmp_path / "killed" / "ema.safetensors"))
    for k, v in exported.state_dict().items():
        assert torch.equal(v, expected_ema[k]), k


def test_crash_during_save_keeps_the_last_checkpoint(tmp_path, clips, monkeypatch):
    out = tmp_path / "run"
    root = str(out / "checkpoints")
    trainer = Trainer(config(out, clips, steps=3, save_every=2, batch=1))
    try:
        while trainer.step < 2:
            trainer.train_step()
        trainer.save()
        saved_weights = {k: v.full_tensor().clone() for k, v in trainer.model.state_dict().items()}
        trainer.train_step()

        def write_then_die(state, path):
            checkpointing.dcp.save(state, checkpoint_id=path)  # shards and metadata on disk ...
            raise RuntimeError("simulated crash during save")  # ... but killed before the rename

        monkeypatch.setattr(checkpointing, "write_shards", write_then_die)
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.save()
    finally:
        trainer.close()
    assert os.path.isdir(os.path.join(root, "step_000003.tmp"))
    assert not os.path.exists(os.path.join(root, "step_000003"))
    with open(os.path.join(root, "latest")) as f:
        assert f.read().strip() == "step_000002"
    monkeypatch.undo()

    with pytest.raises(FileExistsError, match="--resume"):  # never silently overwrites a run
        Trainer(config(out, clips, steps=3, batch=1))
    resumed = Trainer(config(out, clips, steps=3, batch=1, resume=True, keep_last=1))
    try:
        assert resumed.load() and resumed.step == 2
        assert not os.path.exists(os.path.join(root, "step_000003.tmp"))  # leftovers removed at start
        for k, v in resumed.model.state_dict().items():
            assert torch.equal(v.full_tensor(), saved_weights[k]), k
        resumed.peak = 1e9  # pretend a GPU peak: the MFU path (cosmos_models.nets.flops) runs and is logged
        resumed.train()
    finally:
        resumed.close()
    assert [s for s, _ in checkpointing.complete_checkpoints(root)] == [3]  # saved, then older ones pruned
    with open(out / "train_log.jsonl") as f:
        last = json.loads(f.readlines()[-1])
    from cosmos_models.nets import flops
    useful = flops.count("tiny", batch=1, latent=(2, 8, 8), text_len=8)["total_train_step"]
    assert last["step"] == 3 and math.isclose(last["mfu"], useful / last["step_time_s"] / 1e9, rel_tol=1e-9)
    # a pointer to a missing folder (a kill between rename and pointer update) falls back to the newest
    checkpointing.write_text_atomic(os.path.join(root, "latest"), "step_000009\n")
    assert checkpointing.find_latest(root).endswith("step_000003")


def test_cli_tiny_run_under_torchrun(tmp_path):
    """The README path, under torchrun with 2 processes: no --data (generated clips), a checkpoint,
    the log, the EMA export that `cosmos sample` loads."""
    out = tmp_path / "tiny"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(helpers.free_port()), "-m", "cosmos_models.cli", "train", "--config", "tiny", "--out",
           str(out), "--steps", "3", "--log-every", "1", "--frames", str(FRAMES), "--synthetic-clips", "4",
           "--kernel-backend", "torch", "--dist-timeout", "60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step       3  loss" in proc.stdout
    with open(out / "train_log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["tokens_per_s"] > 0
    assert checkpointing.find_latest(str(out / "checkpoints")).endswith("step_000003")
    model = cm.build("tiny")
    cm.load_checkpoint(model, str(out / "ema.safetensors"))
    assert os.path.isfile(out / "vae" / "config.json")


def test_setup_builds_every_network_on_meta(tmp_path, clips, monkeypatch):
    """From scratch, with --init and with --init --lora the trainer builds its networks on the meta
    device only (then shards, allocates and loads or initializes them): no full model on the device."""
    import cosmos_models.training.trainer as trainer_module

    base = tmp_path / "base.safetensors"
    real_build = cm.build
    cm.save_checkpoint(real_build("tiny", "cpu", torch.float32), str(base))
    devices = []

    def build(*args, **kwargs):
        devices.append(str(kwargs.get("device", args[1] if len(args) > 1 else None)))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(trainer_module.cm, "build", build)
    runs = [dict(), dict(init=str(base))]
    if importlib.util.find_spec("peft") is not None:  # LoRA needs peft (an optional package)
        runs += [dict(init=str(base), lora="4"), dict(lora="4")]
    for i, extra in enumerate(runs):
        trainer = Trainer(config(tmp_path / f"run{i}", clips, steps=1, **extra))
        try:
            trainer.setup()
            # the weights: the file's with --init, else cm.build's (the same seed), adapters or not
            plain = {k.replace(".base_layer.", "."): v for k, v in trainer.model.state_dict().items()
                     if ".lora_" not in k}
            torch.manual_seed(trainer.cfg.seed)
            expect = real_build("tiny", "cpu", torch.float32)
            if "init" in extra:
                cm.load_checkpoint(expect, str(base))
            assert all(torch.equal(plain[k].full_tensor(), v) for k, v in expect.state_dict().items()), extra
        finally:
            trainer.close()
    assert devices and set(devices) == {"meta"}, devices
