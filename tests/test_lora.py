"""LoRA post-training (cosmos_models.training.lora): peft adapters on the block projections, only they
trained, checkpointed and resumed exactly; the merged export equals base + adapter unmerged; sample
--lora and cosmos export use the adapter file."""
import os

import pytest
import torch
from safetensors.torch import load_file

import cosmos_models as cm
from cosmos_models import cli
from cosmos_models.training import lora

pytest.importorskip("peft")


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_parse_and_targets():
    assert lora.parse_lora("8") == (8, 8.0) and lora.parse_lora("8:16") == (8, 16.0)
    for bad in ("0", "x", "4:-1"):
        with pytest.raises(ValueError, match="--lora"):
            lora.parse_lora(bad)
    assert lora.parse_targets(None) == lora.DEFAULT_TARGETS
    with pytest.raises(ValueError, match="not projections of a block"):
        lora.parse_targets("q_proj,final_layer")


def test_adapters_wrap_the_block_projections_and_start_as_the_base():
    torch.manual_seed(0)
    model = cm.build("tiny")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    t = torch.full((1, 3), 0.5)
    text = torch.randn(1, 8, 48, generator=g)
    with torch.no_grad():
        before = model(x, t, text)
    adapted = lora.add_lora(model, 4, 8.0)
    assert adapted == 2 * 10  # 2 blocks x (self + cross attention q, k, v, out + MLP 2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert not any("adaln" in n or "final_layer" in n or "embedder" in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(model(x, t, text), before)  # B = 0: step 0 is the base model


def train(out, *extra):
    return cli.main(["train", "--config", "tiny", "--out", str(out), "--log-every", "2", "--save-every", "2",
                     "--no-progress", "--kernel-backend", "torch", "--synthetic-clips", "4", "--batch", "2",
                     "--lr", "1e-2", "--lora", "4:8", *extra])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    torch.manual_seed(3)
    model = cm.build("tiny")
    with torch.no_grad():
        for p in model.parameters():  # zero-initialized layers random too, so every update shows
            if not p.any():
                p.normal_(0, 0.05)
    cm.save_checkpoint(model, path)
    return path


def test_lora_run_trains_saves_and_resumes_only_the_adapters(base, tmp_path):
    straight = tmp_path / "straight"
    assert train(straight, "--init", str(base), "--steps", "4") == 0
    adapters = load_file(str(straight / "lora.safetensors"))
    assert adapters and all(".lora_" in k for k in adapters)
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B moved off zero
    # the checkpoint holds the adapters (and their optimizer state), not the frozen base
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(straight / "checkpoints" / "step_000004")).read_metadata()
    model_keys = [k for k in meta.state_dict_metadata if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys)
    # the merged export differs from the base only in the adapted projections
    merged, plain = load_file(str(straight / "ema.safetensors")), load_file(str(base))
    changed = {k for k in plain if not torch.equal(merged[k].float(), plain[k].float())}
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "output_proj.weight",
                                       "layer1.weight", "layer2.weight")) for k in changed)

    # an interruption after step 2 (the step 4 checkpoint removed) resumes to the same adapters, bit for bit
    import shutil

    resumed = straight  # (the same folder: its run.json names its own data)
    shutil.rmtree(resumed / "checkpoints" / "step_000004")
    (resumed / "checkpoints" / "latest").write_text("step_000002\n")
    os.remove(resumed / "lora.safetensors")
    assert train(resumed, "--init", str(base), "--steps", "4", "--resume") == 0
    again = load_file(str(resumed / "lora.safetensors"))
    assert again.keys() == adapters.keys() and all(torch.equal(again[k], adapters[k]) for k in adapters)


def test_merged_equals_unmerged_and_export_and_sample(base, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "--init", str(base), "--steps", "2") == 0
    g = torch.Generator().manual_seed(0)
    x, t, text = torch.randn(1, 16, 3, 8, 8, generator=g), torch.full((1, 3), 0.3), torch.randn(1, 8, 48, generator=g)
    merged = cm.build("tiny")
    cm.load_checkpoint(merged, str(run / "ema.safetensors"))
    unmerged = cm.build("tiny")
    cm.load_checkpoint(unmerged, str(base))
    plain_out = unmerged(x, t, text).detach()
    lora.apply_adapter(unmerged, str(run / "lora.safetensors"))
    with torch.no_grad():
        a, b = merged(x, t, text), unmerged(x, t, text)
    assert rel(a, b) < 1e-5 and rel(b, plain_out) > 1e-4
    # cosmos export: the same merge from the adapter file; a scale of 0 gives the base back
    out = tmp_path / "merged.safetensors"
    assert cli.main(["export", "--checkpoint", str(base), "--lora", str(run / "lora.safetensors"), "--out",
                     str(out)]) == 0
    exported, ema = load_file(str(out)), load_file(str(run / "ema.safetensors"))
    assert all(rel(exported[k].float(), ema[k].float()) < 1e-5 for k in ema if ema[k].float().norm() > 0)
    zero = tmp_path / "zero.safetensors"
    assert cli.main(["export", "--checkpoint", str(base), "--lora", f"{run / 'lora.safetensors'}:0", "--out",
                     str(zero)]) == 0
    base_sd = load_file(str(base))
    assert all(torch.equal(load_file(str(zero))[k], base_sd[k]) for k in base_sd)
    # cosmos sample --lora (unmerged) runs and records the adapter
    video = tmp_path / "lora.mp4"
    assert cli.main(["sample", "--checkpoint", str(base), "--lora", f"{run / 'lora.safetensors'}:0.5", "--steps",
                     "1", "--guidance", "0", "--no-progress", "--out", str(video)]) == 0
    assert os.path.isfile(video) and "LoRA" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", str(base), "--lora", str(base), "--out", str(video)]) == 2
    assert "not a LoRA adapter" in capsys.readouterr().err


def _train_cli(argv):
    return cli.main(argv)


def test_lora_under_fsdp2_on_two_ranks(base, tmp_path):
    from helpers import run_ranks

    out = tmp_path / "two"
    argv = ["train", "--config", "tiny", "--out", str(out), "--log-every", "2", "--save-every", "2", "--no-progress",
            "--kernel-backend", "torch", "--synthetic-clips", "4", "--batch", "1", "--lr", "1e-2", "--lora", "4:8",
            "--init", str(base), "--steps", "2", "--device", "cpu"]
    assert run_ranks(_train_cli, argv) == {0: 0, 1: 0}
    adapters = load_file(str(out / "lora.safetensors"))
    assert adapters and all(torch.isfinite(v).all() for v in adapters.values())
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)
