"""The README's post-training walkthrough, command by command, on the tiny config (run where the README
says runs/, here a temporary folder): base model, example dataset, captions embedded, LoRA training
watched in TensorBoard, samples merged and unmerged."""
import os

import pytest

from cosmos_models import cli
from cosmos_models.data import example

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("tensorboard")


def test_post_training_walkthrough(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COSMOS_EMBEDDING_CACHE", str(tmp_path / "emb-cache"))
    common = ["--no-progress", "--kernel-backend", "torch"]
    assert cli.main(["train", "--config", "tiny", "--out", "runs/base", "--steps", "20", *common]) == 0
    assert example.main(["runs/dataset", "--text-encoder", "runs/tiny-encoder"]) == 0
    assert sorted(os.listdir("runs/dataset")) == ["metas", "videos"]
    assert cli.main(["embed", "--data", "runs/dataset", "--text-encoder", "runs/tiny-encoder"]) == 0
    assert len(os.listdir("runs/dataset/text_embeddings")) == 8
    assert cli.main(["train", "--config", "tiny", "--init", "runs/base/ema.safetensors", "--data", "runs/dataset",
                     "--vae", "runs/base/vae", "--lora", "8", "--log-to", "tensorboard", "--out", "runs/lora",
                     "--steps", "20", *common]) == 0
    assert os.listdir("runs/lora/tensorboard") and os.path.isfile("runs/lora/lora.safetensors")
    assert cli.main(["sample", "--checkpoint", "runs/lora/ema.safetensors", "--vae", "runs/base/vae",
                     "--text-encoder", "runs/tiny-encoder", "--prompt",
                     "a red square and a blue disc move over a gradient", "--out", "runs/lora/sample.mp4",
                     "--no-progress"]) == 0
    assert cli.main(["sample", "--checkpoint", "runs/base/ema.safetensors", "--lora",
                     "runs/lora/lora.safetensors:0.5", "--vae", "runs/base/vae", "--text-encoder",
                     "runs/tiny-encoder", "--prompt", "a blue square moves up", "--out", "runs/lora/half.mp4",
                     "--no-progress"]) == 0
    for name in ("sample", "half"):
        assert os.path.getsize(f"runs/lora/{name}.mp4") > 0 and os.path.isfile(f"runs/lora/{name}.json")
