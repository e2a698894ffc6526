"""Weight files users have (cosmos_models/nets/weight_files.py): every format loads, every failure is
one line naming the file and what is wrong; a pickle carrying code is refused without running it; the
official WAN2.1 VAE file converts to diffusers' names; `cosmos sample` says it in one line and exit 2."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cosmos_models as cm
from cosmos_models.nets import weight_files as W
from cosmos_models.nets.checkpoint import detect_config, save_checkpoint, to_official

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cm.build("tiny")


def _same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_safetensors_and_its_damage(tmp_path, model):
    path = tmp_path / "w.safetensors"
    save_checkpoint(model, path)
    sd, notes = W.read_weights(path)
    _same(sd, model.state_dict())
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(W.WeightFileError, match=r"cut.safetensors: truncated \(\d+ of the \d+ bytes"):
        W.read_weights(tmp_path / "cut.safetensors")
    (tmp_path / "bad.safetensors").write_bytes((10 ** 9).to_bytes(8, "little") + b"{}")
    with pytest.raises(W.WeightFileError, match="corrupt safetensors header"):
        W.read_weights(tmp_path / "bad.safetensors")
    (tmp_path / "json.safetensors").write_bytes((4).to_bytes(8, "little") + b"nope" + b"\0" * 8)
    with pytest.raises(W.WeightFileError, match=r"corrupt safetensors header \(not JSON\)"):
        W.read_weights(tmp_path / "json.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(W.WeightFileError, match="the file is empty"):
        W.read_weights(tmp_path / "empty.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        W.read_weights(tmp_path / "absent.pt")


def test_released_torch_file_with_transformer_engine_extra_state(tmp_path, model):
    """The released .pt files: official names under net., plus TE `_extra_state` byte buffers."""
    sd = to_official(model.state_dict())
    sd["net.blocks.0.self_attn.q_proj._extra_state"] = io.BytesIO(b"te fp8 meta")
    sd["net.blocks.1.mlp._extra_state"] = io.BytesIO(b"")
    path = tmp_path / "81edfebe-bd6a-4039-8c1d-737df1a790bf_ema_bf16.pt"
    torch.save(sd, path)
    loaded, notes = W.read_weights(path)
    assert len(loaded) == len(model.state_dict()) and "_extra_state" in notes[0] and "dropped 2" in notes[0]
    fresh = cm.build("tiny")
    cm.load_checkpoint(fresh, str(path))
    _same(fresh.state_dict(), model.state_dict())
    assert detect_config(loaded) == "tiny"


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": Payload()}, path)
    with pytest.raises(W.WeightFileError, match=r"evil.pt: refused: the pickle asks to run .*open on loading"):
        W.read_weights(path)
    assert not marker.exists()


def test_truncated_and_foreign_torch_files(tmp_path, model):
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:300])
    with pytest.raises(W.WeightFileError, match="cut.pt: truncated or not a torch file"):
        W.read_weights(tmp_path / "cut.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(W.WeightFileError, match="notes.txt: not a torch file"):
        W.read_weights(tmp_path / "notes.txt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(W.WeightFileError, match="holds a list, not a mapping"):
        W.read_weights(tmp_path / "list.pt")


def test_dcp_folders_ours_and_official(tmp_path, model):
    import torch.distributed.checkpoint as dcp

    ema = {k: v + 1 for k, v in model.state_dict().items()}
    ours = tmp_path / "step_000010"
    dcp.save({"model": model.state_dict(), "ema": ema, "run": {"step": 10}}, checkpoint_id=str(ours))
    _same(W.read_weights(ours, prefer_ema=True)[0], ema)
    _same(W.read_weights(ours)[0], model.state_dict())
    official = tmp_path / "iter_000023000" / "model"
    dcp.save(to_official(model.state_dict(), "net.") | to_official(ema, "net_ema."), checkpoint_id=str(official))
    sd, notes = W.read_weights(official.parent, prefer_ema=True)  # the iter_* folder holding model/
    _same(sd, ema)
    assert "net_ema" in notes[0]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / ".metadata").write_bytes(b"garbage")
    with pytest.raises(W.WeightFileError, match="unreadable torch.distributed.checkpoint metadata"):
        W.read_weights(tmp_path / "half")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(W.WeightFileError, match="a folder with no"):
        W.read_weights(tmp_path / "nothing")


def test_the_official_vae_file_converts_to_diffusers_names(tmp_path):
    from cosmos_models.nets.vae import TINY_CONFIG, WAN21_CONFIG, WanVAE, _autoencoder_cls, official_vae_to_diffusers

    official = json.loads((ROOT / "tests" / "data" / "wan21_vae_official_keys.json").read_text())
    for name, config in (("tiny", TINY_CONFIG), ("wan2.1", WAN21_CONFIG)):
        names = official_vae_to_diffusers({k: torch.empty(v, device="meta") for k, v in official[name].items()},
                                          config)
        with torch.device("meta"):
            expected = _autoencoder_cls()(**config).state_dict()
        assert {k: tuple(v.shape) for k, v in names.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    # a tiny official file: random values under the official names load into the converted VAE
    g = torch.Generator().manual_seed(0)
    values = {k: torch.randn(v, generator=g) for k, v in official["tiny"].items()}
    torch.save(values, tmp_path / "tokenizer.pth")
    vae = WanVAE.from_official_file(str(tmp_path / "tokenizer.pth"), "tiny")
    converted = official_vae_to_diffusers(values, TINY_CONFIG)
    _same(vae.autoencoder.state_dict(), converted)
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(W.WeightFileError, match="not a WAN2.1 VAE of this architecture"):
        WanVAE.from_official_file(str(tmp_path / "other.pth"), "tiny")


def _cosmos(*argv):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "cosmos_models.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cosmos_sample_says_what_is_wrong_in_one_line(tmp_path):
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    proc = _cosmos("sample", "--checkpoint", str(tmp_path / "cut.safetensors"), "--out", str(tmp_path / "o.mp4"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cosmos sample: error:")]
    assert errors == [f"cosmos sample: error: {tmp_path / 'cut.safetensors'}: corrupt safetensors header (it claims "
                      "16 header bytes in a 9-byte file); re-download or re-export it"], proc.stderr
    debug = _cosmos("sample", "--checkpoint", str(tmp_path / "cut.safetensors"), "--out", str(tmp_path / "o.mp4"),
                    "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def _cosmos_pair(*argv_pair):
    """Two `cosmos` processes at once (each its own interpreter: bytes compared across processes)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, "-m", "cosmos_models.cli", *argv], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argv_pair]
    return [(p, *p.communicate(timeout=300)) for p in procs]


def test_same_seed_same_mp4_bytes_with_and_without_a_checkpoint(tmp_path):
    common = ["sample", "--config", "tiny", "--steps", "2", "--seed", "7", "--no-progress", "--frames", "5"]
    for proc, _, err in _cosmos_pair(*([*common, "--out", str(tmp_path / f"{n}.mp4")] for n in ("a", "b"))):
        assert proc.returncode == 0, err[-2000:]
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    torch.manual_seed(3)
    path = tmp_path / "w.safetensors"
    save_checkpoint(cm.build("tiny"), path)
    for proc, _, err in _cosmos_pair(*([*common, "--checkpoint", str(path), "--out", str(tmp_path / f"{n}.mp4")]
                                       for n in ("c", "d"))):
        assert proc.returncode == 0, err[-2000:]
    assert (tmp_path / "c.mp4").read_bytes() == (tmp_path / "d.mp4").read_bytes()
    assert (tmp_path / "a.mp4").read_bytes() != (tmp_path / "c.mp4").read_bytes()
