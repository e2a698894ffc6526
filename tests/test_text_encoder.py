"""Prompts -> embeddings (cosmos_models.nets.text_encoder, `cosmos embed`, `cosmos sample --prompt`) with a
tiny random Qwen2.5-VL and a word-level tokenizer made here (nothing is downloaded)."""
import gc
import json
import os
import weakref

import numpy as np
import pytest
import torch

from cosmos_models import cli
from cosmos_models.data.clips import load_sidecar
from cosmos_models.data.video_io import read_video
from cosmos_models.nets import text, text_encoder as te
from cosmos_models.sampling.presets import DEFAULT_NEGATIVE_PROMPT
from tests.helpers import record_written_videos
from cosmos_models.nets.tiny_text_encoder import HIDDEN as TINY_ENCODER_HIDDEN, LAYERS as TINY_ENCODER_LAYERS, \
    make_tiny_text_encoder

transformers = pytest.importorskip("transformers")

LAYERS, HIDDEN = TINY_ENCODER_LAYERS, TINY_ENCODER_HIDDEN


def make_encoder(folder, seed=0):
    return make_tiny_text_encoder(folder, seed)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("reason1-tiny"))


@pytest.fixture(autouse=True)
def no_ambient_encoder(monkeypatch, tmp_path):
    """No encoder from the environment or a real HF cache, and a fresh embedding cache per test."""
    monkeypatch.delenv(te.ENV_ENCODER, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv(te.ENV_CACHE, str(tmp_path / "emb-cache"))


def reference_embedding(folder, prompt, length=text.TEXT_LEN):
    """The official recipe written out: chat template text, unpadded tokens, pad-token padding to 512,
    every hidden state after the token embedding normalized over channels, concatenated."""
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    chat = tok.apply_chat_template([{"role": "system", "content": text.SYSTEM_PROMPT},
                                    {"role": "user", "content": prompt}], tokenize=False)
    ids = tok(chat)["input_ids"][:length]
    ids = ids + [tok.pad_token_id] * (length - len(ids))
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    layers = [(h.float() - h.float().mean(-1, keepdim=True)) / (h.float().std(-1, keepdim=True) + 1e-8)
              for h in hidden[1:]]
    return torch.cat(layers, -1)[0]


def test_prompt_embedding_is_the_official_recipe(encoder_dir):
    enc = te.PromptEncoder(encoder_dir, device="cpu", cache_dir=False)
    prompt = "a robot arm picks up the red cube"
    (emb,) = enc(prompt)
    assert emb.shape == (512, LAYERS * HIDDEN) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    ref = reference_embedding(encoder_dir, prompt)
    assert (emb - ref).norm() / ref.norm() < 1e-5
    again, other = enc([prompt, "a blue car drives on the road"])
    assert torch.equal(again, emb) and (other - emb).norm() / emb.norm() > 0.05
    # a prompt longer than 512 tokens is truncated, as officially
    (long,) = enc(" ".join(["red cube"] * 400))
    assert long.shape == (512, LAYERS * HIDDEN)


def test_disk_cache_hit_without_loading_the_encoder_and_miss_on_a_changed_encoder(encoder_dir, tmp_path):
    cache = tmp_path / "cache"
    first = te.PromptEncoder(encoder_dir, device="cpu", cache_dir=cache)
    (emb,) = first("a red cube")
    assert (first.hits, first.misses) == (0, 1) and len(os.listdir(cache)) == 1
    ref = weakref.ref(first._encoder.model)
    first.release()
    gc.collect()
    assert ref() is None and not first.loaded  # the encoder's weights are gone, the cache stays

    second = te.PromptEncoder(encoder_dir, device="cpu", cache_dir=cache)
    (hit,) = second("a red cube")
    assert torch.equal(hit, emb) and (second.hits, second.misses) == (1, 0) and not second.loaded

    # a damaged cache entry is computed again, not served
    (entry,) = os.listdir(cache)
    with open(cache / entry, "r+b") as f:
        f.truncate(100)
    third = te.PromptEncoder(encoder_dir, device="cpu", cache_dir=cache)
    assert torch.equal(third("a red cube")[0], emb) and third.misses == 1

    # a batch warms the cache and reads one embedding at a time back (nothing kept in memory)
    batch = te.PromptEncoder(encoder_dir, device="cpu", cache_dir=cache)
    batch.warm(["a red cube", "a blue car", "a blue car"])
    assert (batch.hits, batch.misses) == (1, 1) and torch.equal(batch.cached("a red cube"), emb)
    with pytest.raises(FileNotFoundError, match="no cached embedding"):
        batch.cached("never embedded")
    with pytest.raises(ValueError, match="disk cache"):
        te.PromptEncoder(encoder_dir, device="cpu", cache_dir=False).warm(["x"])

    # other weights in the same folder layout: another key, never the stale embedding
    changed = make_encoder(tmp_path / "changed", seed=1)
    fourth = te.PromptEncoder(changed, device="cpu", cache_dir=cache)
    (fresh,) = fourth("a red cube")
    assert fourth.misses == 1 and (fresh - emb).norm() / emb.norm() > 0.05


def test_locate_text_encoder_order_and_message(encoder_dir, tmp_path, monkeypatch):
    assert te.locate_text_encoder(encoder_dir) == encoder_dir
    with pytest.raises(te.TextEncoderNotFound) as err:
        te.locate_text_encoder(tmp_path / "nowhere")
    assert "--text-encoder" in str(err.value) and "nowhere" in str(err.value)
    with pytest.raises(te.TextEncoderNotFound) as err:
        te.locate_text_encoder()
    message = str(err.value)
    for part in (te.ENV_ENCODER, "not set", "hf-empty", te.REPO_ID, "--prompt-embedding"):
        assert part in message, message
    monkeypatch.setenv(te.ENV_ENCODER, encoder_dir)
    assert te.locate_text_encoder() == encoder_dir
    # the Hugging Face cache layout, at the official pinned revision and at another one
    monkeypatch.delenv(te.ENV_ENCODER)
    hub = tmp_path / "hub"
    for revision in (te.REVISION, "0" * 40):
        snap = hub / ("models--" + te.REPO_ID.replace("/", "--")) / "snapshots" / revision
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        monkeypatch.setenv("HF_HUB_CACHE", str(hub))
        assert te.locate_text_encoder() == str(snap)
        (snap / "config.json").unlink()


def _mp4_frames(path):
    return np.asarray(read_video(str(path))[0])


def test_cli_sample_from_a_prompt_equals_sample_from_its_embedding(encoder_dir, tmp_path, capsys, monkeypatch):
    written = record_written_videos(monkeypatch)
    common = ["--config", "tiny", "--steps", "2", "--guidance", "2", "--no-progress", "--device", "cpu",
              "--text-encoder", encoder_dir]
    out = tmp_path / "prompt.mp4"
    prompt = "a robot arm picks up a red cube"
    assert cli.main(["sample", "--prompt", prompt, *common, "--out", str(out)]) == 0
    err = capsys.readouterr().out
    assert "text embedded by" in err and "0 cached, 2 computed" in err
    recorded = json.loads((tmp_path / "prompt.json").read_text())
    assert recorded["prompt"] == prompt and recorded["negative_prompt"] == DEFAULT_NEGATIVE_PROMPT
    assert recorded["text_encoder"] == encoder_dir and recorded["seed"] == 1 and recorded["steps"] == 2
    # the official default negative prompt was embedded (it is in the cache now)
    enc = te.PromptEncoder(encoder_dir, device="cpu")
    enc([prompt, DEFAULT_NEGATIVE_PROMPT])
    assert (enc.hits, enc.misses) == (2, 0)

    # the same video from files written by `cosmos embed`
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"name": n, "prompt": p}) for n, p in
                                 (("pos", prompt), ("neg", DEFAULT_NEGATIVE_PROMPT))) + "\n")
    assert cli.main(["embed", "--prompts", str(prompts), "--out", str(tmp_path / "emb"), "--dtype", "fp32",
                     "--text-encoder", encoder_dir]) == 0
    assert "2 from the cache" in capsys.readouterr().err
    again = tmp_path / "files.mp4"
    assert cli.main(["sample", "--prompt-embedding", str(tmp_path / "emb" / "pos.pt"), "--negative-prompt-embedding",
                     str(tmp_path / "emb" / "neg.pt"), *common, "--out", str(again)]) == 0
    assert torch.equal(written[str(out)], written[str(again)])  # the generated videos, bit for bit
    assert _mp4_frames(out).shape == _mp4_frames(again).shape
    # (the tiny DiT reads the first 8 tokens only, all of them the system prompt: which prompt it was
    # cannot change its video; the embeddings' dependence on the prompt is tested above)


def test_cli_prompt_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "o.mp4")
    assert cli.main(["sample", "--config", "tiny", "--prompt", "a red cube", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "no Reason1 text encoder found" in err and "--prompt-embedding" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sample", "--config", "tiny", "--prompt", "x", "--prompt-embedding", "e.pt", "--out", out])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no abbreviations: --prompt-emb is not --prompt-embedding
        cli.main(["sample", "--config", "tiny", "--prompt-emb", "e.pt", "--out", out])
    # guidance without a negative prompt or an encoder: the random stand-in, said loudly (and it runs)
    assert cli.main(["sample", "--config", "tiny", "--steps", "1", "--guidance", "2", "--no-progress", "--out",
                     out]) == 0
    assert "no text encoder for the official default negative prompt" in capsys.readouterr().err


def test_embed_prompt_files(encoder_dir, tmp_path, capsys):
    txt = tmp_path / "p.txt"
    txt.write_text("a red cube\n\na blue car\n")
    assert cli.main(["embed", "--prompts", str(txt), "--out", str(tmp_path / "o"), "--text-encoder",
                     encoder_dir]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["prompt_00000.pt", "prompt_00001.pt"]
    emb = load_sidecar(str(tmp_path / "o" / "prompt_00001.pt"), "embedding")
    assert emb.dtype == torch.bfloat16 and emb.shape == (512, LAYERS * HIDDEN)
    ref = te.PromptEncoder(encoder_dir, device="cpu", cache_dir=False)("a blue car")[0]
    assert (emb.float() - ref).norm() / ref.norm() < 1e-2  # bf16 storage
    # a second run keeps the files; a dict form names them
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"clip_a": "a red cube"}))
    assert cli.main(["embed", "--prompts", str(js), "--out", str(tmp_path / "o"), "--text-encoder",
                     encoder_dir]) == 0
    assert "clip_a.pt" in os.listdir(tmp_path / "o")
    capsys.readouterr()
    for body, ext, why in (('[{"name": "../x", "prompt": "a"}]', ".json", "not a file name"),
                           ('[{"prompt": ""}]', ".json", "non-empty"),
                           ('{"prompt": "a"}\nnot json\n', ".jsonl", "line 2"),
                           ('["a", "b"', ".json", "not JSON"),
                           ('[{"name": "a", "prompt": "x"}, {"name": "a", "prompt": "y"}]', ".json", "more than once"),
                           ("a", ".csv", ".txt, .json or .jsonl")):
        bad = tmp_path / f"bad{ext}"
        bad.write_text(body)
        assert cli.main(["embed", "--prompts", str(bad), "--out", str(tmp_path / "b"), "--text-encoder",
                         encoder_dir]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
