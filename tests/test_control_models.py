"""Depth and segmentation controls computed by transformers models (tiny random Depth-Anything and
Segformer built here, no download), checked against a plain reference of the same networks; the
`cosmos control` command for every kind; on-the-fly controls in Transfer sampling."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from cosmos_models import cli  # noqa: E402
from cosmos_models.data.video_io import read_video, to_uint8, write_video  # noqa: E402
from cosmos_models.sampling import control as C  # noqa: E402
from cosmos_models.sampling.control_models import SEG_PALETTE, ControlModel  # noqa: E402

T, H, W = 5, 40, 56


def make_depth_model(folder) -> str:
    """A random Depth-Anything (DINOv2 backbone) with its DPT image processor, 28x28 inputs."""
    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                                         image_size=28, patch_size=14, reshape_hidden_states=False,
                                         out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16,
                                              neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                                              head_hidden_size=8, patch_size=14)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    transformers.DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=False,
                                   ensure_multiple_of=14).save_pretrained(folder)
    return str(folder)


def make_seg_model(folder, labels: int = 5) -> str:
    """A random two-stage Segformer with its image processor, 32x32 inputs."""
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                          mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=labels)
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(folder)
    transformers.SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory):
    return make_depth_model(tmp_path_factory.mktemp("depth"))


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
    return make_seg_model(tmp_path_factory.mktemp("seg"))


def clip(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(3, T, H, W, generator=g) * 0.4 - 0.8
    for t in range(T):
        video[:, t, 5 + 3 * t:25 + 3 * t, 10:30] = 0.8  # a moving bright square
    return video


def frames_of(video):
    return list(to_uint8(video).permute(1, 2, 3, 0).numpy())


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_depth_matches_the_plain_reference(depth_dir):
    video = clip()
    out = torch.full((3, T, H, W), float("nan"))  # poisoned: every element must be written
    out.copy_(ControlModel("depth", depth_dir, device="cpu", batch_size=2)(video))
    # the reference: the network on all frames at once, bicubic to the input size, min-max over the clip
    processor = transformers.AutoImageProcessor.from_pretrained(depth_dir)
    model = transformers.AutoModelForDepthEstimation.from_pretrained(depth_dir).eval()
    with torch.no_grad():
        depth = model(**processor(images=frames_of(video), return_tensors="pt")).predicted_depth
    depth = F.interpolate(depth[:, None], size=(H, W), mode="bicubic", align_corners=False)[:, 0]
    gray = ((depth - depth.min()) / (depth.max() - depth.min()) * 255).floor()
    ref = (gray / 127.5 - 1)[None].expand(3, -1, -1, -1)
    assert torch.isfinite(out).all() and rel(out, ref) < 1e-5
    assert out.min() == -1 and out.max() == 1 and torch.equal(out[0], out[2])
    assert torch.equal(ControlModel("depth", depth_dir, device="cpu")(video), out)  # batch size does not matter


def test_seg_paints_each_class_with_its_palette_color(seg_dir):
    video = clip(1)
    out = ControlModel("seg", seg_dir, device="cpu", batch_size=3)(video)
    processor = transformers.AutoImageProcessor.from_pretrained(seg_dir)
    model = transformers.AutoModelForSemanticSegmentation.from_pretrained(seg_dir).eval()
    with torch.no_grad():
        logits = model(**processor(images=frames_of(video), return_tensors="pt")).logits
    classes = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False).argmax(1)  # (T, H, W)
    ref = torch.from_numpy(SEG_PALETTE[classes.numpy()]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.isfinite(out).all() and torch.equal(out, ref)
    assert len(torch.unique(classes)) >= 2  # a map with more than one class, so the colors are tested


def test_control_model_errors(tmp_path, depth_dir, seg_dir):
    with pytest.raises(FileNotFoundError, match="--depth-model .*no such folder"):
        ControlModel("depth", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="--depth-model .*not a depth-estimation model"):
        ControlModel("depth", seg_dir, device="cpu")
    with pytest.raises(ValueError, match="kind='edge'"):
        ControlModel("edge", depth_dir)
    with pytest.raises(ValueError, match=r"video must be a non-empty \(3, T, H, W\)"):
        ControlModel("depth", depth_dir, device="cpu")(torch.zeros(1, T, H, W))
    with pytest.raises(ValueError, match="only .*'depth', 'seg'.* computed by a model"):
        C.control_inputs(clip(), ["edge"], control_models={"edge": depth_dir})
    with pytest.raises(ValueError, match="--depth-model FOLDER"):
        C.control_inputs(clip(), ["depth"])


def test_control_inputs_compute_depth_and_seg_unless_given(depth_dir, seg_dir):
    video = clip()
    out = C.control_inputs(video, ["depth", "seg"], control_models={"depth": depth_dir, "seg": seg_dir})
    assert torch.equal(out["depth"], ControlModel("depth", depth_dir, device="cpu")(video))
    assert torch.equal(out["seg"], ControlModel("seg", seg_dir, device="cpu")(video))
    given = torch.zeros(1, T, H, W)
    out = C.control_inputs(video, ["depth"], control_videos={"depth": given}, control_models={"depth": depth_dir})
    assert torch.equal(out["depth"], given.expand(3, -1, -1, -1))  # a given video wins over the model


def test_cosmos_control_writes_every_kind(tmp_path, depth_dir, seg_dir, capsys):
    source = tmp_path / "in.mp4"
    write_video(source, clip(), 16.0, codec="mpeg4")
    decoded, _ = read_video(source, dtype=torch.uint8)
    kinds = [("depth", ["--model", depth_dir]), ("seg", ["--model", seg_dir])]
    if importlib.util.find_spec("cv2") is not None:  # edge and blur are OpenCV's
        kinds += [("edge", []), ("blur", ["--preset", "high"])]
    for kind, extra in kinds:
        out = tmp_path / f"{kind}.mp4"
        assert cli.main(["control", "--kind", kind, "--video", str(source), "--out", str(out), "--device", "cpu",
                         *extra]) == 0, capsys.readouterr().err
        video, fps = read_video(out)
        assert video.shape == (3, T, H, W) and fps == 16.0
        if kind == "depth":
            expected = ControlModel("depth", depth_dir, device="cpu")(decoded)
            assert rel(video, expected) < 0.1  # through a lossy codec
    assert cli.main(["control", "--kind", "depth", "--video", str(source), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--kind depth needs --model FOLDER" in capsys.readouterr().err
    assert cli.main(["control", "--kind", "seg", "--video", str(source), "--out", str(tmp_path / "x.mp4"),
                     "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--model " in err and "no such folder" in err


def test_cosmos_control_data_fills_the_depth_folder_training_reads(tmp_path, depth_dir, capsys):
    from cosmos_models.data import clips as D

    made = D.make_synthetic_videos(tmp_path / "videos", n=2, frames=9, size=(64, 64), fps=16, text_len=8, text_dim=48)
    args = ["control", "--kind", "depth", "--model", depth_dir, "--data", str(tmp_path), "--device", "cpu"]
    assert cli.main(args) == 0
    assert "2 depth video(s) written" in capsys.readouterr().err
    for path in made:
        depth, _ = read_video(tmp_path / "depth" / path.split("/")[-1])
        assert depth.shape == (3, 9, 64, 64)
    assert cli.main(args) == 0 and "kept 2 existing" in capsys.readouterr().err
    ds = D.ClipDataset(tmp_path, num_frames=9, fps=16, resolution=(64, 64), text_len=8, controls=("depth",))
    assert len(ds) == 2 and ds[0]["control_video"]["depth"].shape == (3, 9, 64, 64)


def test_transfer_sampling_computes_depth_on_the_fly(depth_dir):
    pytest.importorskip("diffusers")
    import cosmos_models as cm
    from cosmos_models.nets.vae import WanVAE
    from cosmos_models.sampling.sampler import Sampler

    torch.manual_seed(0)
    vae = WanVAE.from_config("tiny").eval()
    sampler = Sampler(cm.build("tiny-transfer"), vae)
    cfg = sampler.config
    source = F.interpolate(clip(), size=(64, 64), mode="bilinear", align_corners=False)
    text = torch.randn(cfg.text_len, cfg.text_channels, generator=torch.Generator().manual_seed(0))
    kw = dict(prompt_embedding=text, negative_prompt_embedding=text, num_steps=1, progress=False, video=source,
              control=["depth"], seed=1, output="latent")
    computed = sampler.generate("transfer", control_models={"depth": depth_dir}, **kw)
    given = sampler.generate("transfer", control_videos={"depth": ControlModel("depth", depth_dir, device="cpu")(source)},
                             **kw)
    assert torch.equal(computed, given)
