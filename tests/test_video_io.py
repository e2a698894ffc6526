"""mp4 and image files round trip through PyAV with the right frame count, size, fps and colors."""
import numpy as np
import pytest
import torch

from cosmos_models.data import video_io as V
cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")


def smooth_video(t=9, h=32, w=48):
    """A float video in [−1, 1] with smooth gradients that a lossy codec keeps closely, and a
    per-frame brightness ramp so frame order is visible."""
    ys = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    frames = [torch.stack([0.8 * xs, 0.8 * ys, torch.full((h, w), -0.9 + 1.8 * i / max(t - 1, 1))])
              for i in range(t)]
    return torch.stack(frames, 1)  # (3, T, H, W)


@pytest.mark.parametrize("codec", [None, "mpeg4"])
def test_mp4_round_trip(tmp_path, codec):
    video = smooth_video()
    path = tmp_path / "out.mp4"
    used = V.write_video(path, video, fps=16, codec=codec)
    assert used == (codec or V.default_codec())
    back, fps = V.read_video(path)
    assert back.shape == video.shape and back.dtype == torch.float32
    assert fps == pytest.approx(16)
    assert (back - video).abs().mean() < 0.03  # lossy 4:2:0, but close
    # frame order kept: the third channel ramps up frame by frame
    means = back[2].mean(dim=(1, 2))
    assert (means[1:] > means[:-1]).all()


def test_layouts_dtypes_and_fractional_fps(tmp_path):
    video = V.to_uint8(smooth_video(t=5, h=16, w=16))
    path = tmp_path / "thwc.mp4"
    V.write_video(path, video.permute(1, 2, 3, 0), fps=29.97)  # (T, H, W, C) uint8
    back, fps = V.read_video(path, dtype=torch.uint8)
    assert back.dtype == torch.uint8 and back.shape == (3, 5, 16, 16)
    assert fps == pytest.approx(30000 / 1001, rel=1e-3)
    assert (back.float() - video.float()).abs().mean() < 6
    first_two, _ = V.read_video(path, max_frames=2)
    assert first_two.shape == (3, 2, 16, 16)


def test_grayscale_video_is_written_as_rgb(tmp_path):
    gray = torch.linspace(-1, 1, 16 * 16).reshape(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    V.write_video(tmp_path / "g.mp4", gray, fps=8)
    back, _ = V.read_video(tmp_path / "g.mp4")
    assert back.shape == (3, 3, 16, 16)
    assert (back[0] - back[1]).abs().max() < 0.05


def test_bad_videos_are_rejected(tmp_path):
    out = tmp_path / "x.mp4"
    with pytest.raises(ValueError, match="even"):
        V.write_video(out, torch.zeros(3, 2, 15, 16), fps=8)
    with pytest.raises(ValueError, match="ambiguous"):
        V.write_video(out, torch.zeros(3, 4, 4, 3), fps=8)
    V.write_video(out, torch.zeros(3, 4, 4, 3), fps=8, layout="THWC")  # said explicitly: fine
    with pytest.raises(ValueError, match="4-D"):
        V.write_video(out, torch.zeros(3, 16, 16), fps=8)
    with pytest.raises(ValueError, match="fps"):
        V.write_video(out, torch.zeros(3, 2, 16, 16), fps=0)
    with pytest.raises(ValueError, match="no frames"):
        V.write_video(out, torch.zeros(3, 0, 16, 16), fps=8)
    with pytest.raises(TypeError, match="dtype"):
        V.write_video(out, torch.zeros(3, 2, 16, 16, dtype=torch.int32), fps=8)
    with pytest.raises(FileNotFoundError):
        V.read_video(tmp_path / "missing.mp4")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_read_image(tmp_path, ext):
    h, w = 12, 20
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (255, 0, 0)  # left half red, right half blue
    rgb[:, w // 2:] = (0, 0, 255)
    path = str(tmp_path / f"img{ext}")
    assert cv2.imwrite(path, rgb[..., ::-1])  # OpenCV writes BGR
    image = V.read_image(path)
    assert image.shape == (3, h, w) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    tol = 0.01 if ext == ".png" else 0.15
    assert (image[:, :, 2] - torch.tensor([[1.0], [-1.0], [-1.0]])).abs().max() < tol       # red
    assert (image[:, :, w - 3] - torch.tensor([[-1.0], [-1.0], [1.0]])).abs().max() < tol   # blue
    as_video, fps = V.read_image_or_video(path, dtype=torch.uint8)
    assert as_video.shape == (3, 1, h, w) and as_video.dtype == torch.uint8 and fps is None


def test_read_image_rejects_non_images(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot decode"):
        V.read_image(junk)
    with pytest.raises(FileNotFoundError):
        V.read_image(tmp_path / "missing.png")


def test_conversions():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0])
    assert V.to_uint8(x).tolist() == [0, 64, 128, 255, 255]
    assert torch.allclose(V.to_float(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
