"""The official post-training dataset layout (DATASET/videos/*.mp4 + DATASET/metas/<name>.txt): captions
embedded once by `cosmos embed --data` or `cosmos train --text-encoder`, read by the loaders from
DATASET/text_embeddings/, a missing caption or an unembedded one skipped with one warning naming the fix."""
import os
import shutil
import warnings

import pytest
import torch

from cosmos_models import cli
from cosmos_models.data import clips as D
from cosmos_models.nets.tiny_text_encoder import make_tiny_text_encoder

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("reason1-tiny"))


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("COSMOS_EMBEDDING_CACHE", str(tmp_path / "emb-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.delenv("COSMOS_TEXT_ENCODER", raising=False)


def official_dataset(root):
    """videos/{clip_a, clip_b, nocaption, short}.mp4 and broken.mp4; metas/ for all but nocaption."""
    videos, metas = root / "videos", root / "metas"
    made = D.make_synthetic_videos(videos, n=3, frames=17, size=(64, 64), fps=16, seed=0)
    for path, name in zip(made, ("clip_a", "clip_b", "nocaption")):
        os.replace(path, videos / f"{name}.mp4")
        os.remove(os.path.splitext(path)[0] + ".pt")  # the official layout has captions, not embeddings
    (short,) = D.make_synthetic_videos(root / "tmp", n=1, frames=3, size=(64, 64), fps=16, seed=1)
    shutil.move(short, videos / "short.mp4")
    shutil.rmtree(root / "tmp")
    (videos / "broken.mp4").write_bytes(b"not a video")
    metas.mkdir()
    for name, text in (("clip_a", "a red cube moves"), ("clip_b", "a blue car drives"), ("short", "a robot arm"),
                       ("broken", "a road")):
        (metas / f"{name}.txt").write_text(text + "\n")
    return root


def dataset_warnings(root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = D.ClipDataset(root, num_frames=9, fps=16, resolution=(64, 64), text_len=8)
    return ds, {os.path.basename(str(w.message).split(":")[0].split()[-1]): str(w.message) for w in caught
                if issubclass(w.category, D.DataWarning)}


def test_embed_data_then_the_loader_reads_the_captions(encoder_dir, tmp_path, capsys):
    root = official_dataset(tmp_path / "dataset")
    D._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="no usable files"):  # nothing embedded yet: every clip says why
            D.ClipDataset(root, num_frames=9, fps=16, resolution=(64, 64), text_len=8)
    text = " ".join(str(w.message) for w in caught)
    assert f"cosmos embed --data {root}" in text and "no caption" in text

    assert cli.main(["embed", "--data", str(root), "--text-encoder", encoder_dir]) == 0
    err = capsys.readouterr().err
    assert "4 caption(s) embedded" in err and "1 video(s) without a caption" in err
    assert sorted(os.listdir(root / D.EMBEDDINGS_DIR)) == ["broken.pt", "clip_a.pt", "clip_b.pt", "short.pt"]
    assert cli.main(["embed", "--data", str(root), "--text-encoder", encoder_dir]) == 0
    again = capsys.readouterr().err
    assert "0 caption(s) embedded" in again and "4 already there" in again

    D._WARNED.clear()
    ds, said = dataset_warnings(root)
    assert sorted(os.path.basename(f) for f in ds.files) == ["clip_a.mp4", "clip_b.mp4"]
    assert "no caption" in said["nocaption.mp4"] and "too short" in said["short.mp4"] and "broken.mp4" in said
    item = ds[ds.files.index(str(root / "videos" / "clip_a.mp4"))]
    assert item["text"].shape == (8, 48) and torch.isfinite(item["text"]).all()
    # not the official layout (no metas/): the old rule, the embedding beside the video
    assert D.official_layout(str(tmp_path / "elsewhere" / "videos" / "x.mp4")) is None


def test_metadata_csv_captions_clips_without_a_metas_file(encoder_dir, tmp_path, capsys):
    """metadata.csv (a header, then "video,caption" rows; quoted captions may hold commas) captions the
    clips that have no metas/<name>.txt; a metas file wins over the table; a clip in neither is skipped."""
    root = official_dataset(tmp_path / "dataset")
    shutil.rmtree(root / "metas")  # only the table now
    (root / "metadata.csv").write_text('video,caption\n'
                                       'videos/clip_a.mp4,"a red cube, then a disc"\n'
                                       'clip_b.mp4,a blue car drives\n')
    table = D.read_metadata_csv(str(root / "metadata.csv"))
    assert table == {"clip_a": "a red cube, then a disc", "clip_b": "a blue car drives"}
    where, text = D.caption_of(str(root / "videos" / "clip_a.mp4"))
    assert text == "a red cube, then a disc" and where.startswith(str(root / "metadata.csv"))
    assert D.caption_of(str(root / "videos" / "short.mp4")) is None
    (root / "metas").mkdir()
    (root / "metas" / "clip_b.txt").write_text("a green car drives\n")
    assert D.caption_of(str(root / "videos" / "clip_b.mp4"))[1] == "a green car drives"

    assert cli.main(["embed", "--data", str(root), "--text-encoder", encoder_dir]) == 0
    assert "2 caption(s) embedded" in capsys.readouterr().err
    D._WARNED.clear()
    ds, said = dataset_warnings(root)
    assert sorted(os.path.basename(f) for f in ds.files) == ["clip_a.mp4", "clip_b.mp4"]
    assert "no caption" in said["nocaption.mp4"] and "metadata.csv" in said["nocaption.mp4"]


def test_train_on_the_official_layout_embeds_the_captions_first(encoder_dir, tmp_path, capsys):
    pytest.importorskip("diffusers")  # clips without cached latents go through the tiny WAN VAE
    root = official_dataset(tmp_path / "dataset")
    out = tmp_path / "run"
    assert cli.main(["train", "--config", "tiny", "--data", str(root), "--text-encoder", encoder_dir, "--out", str(out),
                     "--steps", "2", "--batch", "2", "--log-every", "1", "--no-progress", "--kernel-backend",
                     "torch"]) == 0
    printed = capsys.readouterr()
    assert "embedded 4 captions" in printed.out and "2 usable files" in printed.out + printed.err
    assert os.path.isfile(out / "ema.safetensors")
    with pytest.raises(SystemExit):
        cli.main(["embed", "--data", str(root), "--prompts", "p.txt"])  # one source at a time
    assert cli.main(["embed", "--data", str(tmp_path)]) == 2  # not the official layout
    assert "expected the official layout" in capsys.readouterr().err
