"""Transfer2.5 control inputs: Canny edges and the official blur computed from a video, given
depth/segmentation videos validated, and spatial weight masks brought to the latent grid."""
import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")

from cosmos_models.sampling import control as C  # noqa: E402
from cosmos_models.data.video_io import to_uint8  # noqa: E402

T, H, W = 3, 32, 48


def square_video(t=T, h=H, w=W):
    """Black frames with a white square (moving one pixel per frame), uint8 (3, T, H, W)."""
    v = torch.zeros(3, t, h, w, dtype=torch.uint8)
    for i in range(t):
        v[:, i, 8:24, 10 + i:30 + i] = 255
    return v


# ----------------------------------------------------------------------------- edge
def test_edges_outline_the_square():
    video = square_video()
    edges = C.edge_control(video)
    assert edges.shape == (3, T, H, W) and edges.dtype == torch.float32
    assert set(edges.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(edges[0], edges[1]) and torch.equal(edges[0], edges[2])
    on = edges[0] > 0
    for i in range(T):
        border = torch.zeros(H, W, dtype=torch.bool)
        border[7:25, 9 + i:31 + i] = True
        border[10:22, 12 + i:28 + i] = False  # a ring around the square's outline
        assert on[i].any() and not (on[i] & ~border).any(), f"frame {i}: edges off the outline"
    # float input in [−1, 1] gives the same map as its uint8 form
    assert torch.equal(C.edge_control(video.float() / 127.5 - 1), edges)


def test_edge_presets_are_the_official_thresholds_and_order():
    assert C.EDGE_THRESHOLDS["medium"] == (100, 200)
    assert C.EDGE_THRESHOLDS["low"] == (50, 100) and C.EDGE_THRESHOLDS["high"] == (200, 300)
    # a smooth low-contrast texture: a higher threshold keeps fewer edge pixels
    g = torch.Generator().manual_seed(0)
    small = torch.rand(3 * T, 1, H // 4, W // 4, generator=g)
    texture = torch.nn.functional.interpolate(small, size=(H, W), mode="bicubic", align_corners=False)
    noise = 0.4 * texture.reshape(3, T, H, W).clamp(0, 1)
    counts = [(C.edge_control(noise * 2 - 1, p) > 0).sum().item() for p in ("very_low", "low", "medium", "high")]
    assert counts[0] > counts[1] > counts[2] > counts[3], counts
    # exactly OpenCV's Canny on the RGB frame
    frame = np.ascontiguousarray(to_uint8(noise * 2 - 1)[:, 1].permute(1, 2, 0).numpy())
    ref = cv2.Canny(frame, 100, 200)
    assert torch.equal(C.edge_control(noise * 2 - 1)[0, 1] > 0, torch.from_numpy(ref > 0))


# ----------------------------------------------------------------------------- blur
def test_blur_keeps_flat_color_and_removes_detail():
    flat = torch.full((3, T, H, W), 0.2)
    flat[1] = -0.6
    out = C.blur_control(flat)
    assert out.shape == flat.shape
    assert (out - C.blur_control(flat, "none")).abs().max() < 1e-6  # a flat frame stays itself
    g = torch.Generator().manual_seed(1)
    noisy = torch.rand(3, T, H, W, generator=g) * 2 - 1
    for preset in ("low", "medium", "high"):
        blurred = C.blur_control(noisy, preset)
        assert blurred.min() >= -1 and blurred.max() <= 1
        detail = (blurred[:, :, 1:] - blurred[:, :, :-1]).abs().mean()  # neighboring-pixel differences
        assert detail < 0.1 * (noisy[:, :, 1:] - noisy[:, :, :-1]).abs().mean(), preset


def test_blur_none_is_the_input_and_keeps_the_layout():
    video = square_video()
    assert torch.equal(C.blur_control(video, "none"), video.float() / 127.5 - 1)
    out = C.blur_control(video, "medium")
    # the square is still brighter than the background after blurring
    assert out[:, 0, 12:20, 16:24].mean() > out[:, 0, :, 40:].mean() + 0.5


@pytest.mark.parametrize("fn", [C.edge_control, C.blur_control])
def test_computed_controls_reject_bad_input(fn):
    with pytest.raises(ValueError, match="preset"):
        fn(square_video(), "strong")
    with pytest.raises(ValueError, match="C, T, H, W"):
        fn(torch.zeros(2, H, W, 3))
    with pytest.raises(TypeError, match="dtype"):
        fn(torch.zeros(3, T, H, W, dtype=torch.int64))


# ----------------------------------------------------------------------------- given videos
def test_given_depth_and_seg_are_validated_and_expanded():
    video = square_video()
    depth = torch.linspace(0, 255, H * W).reshape(1, 1, H, W).expand(1, T, H, W).to(torch.uint8)
    out = C.given_control("depth", depth, video)
    assert out.shape == (3, T, H, W) and torch.equal(out[0], out[2])
    assert out.min() == -1 and out.max() == 1
    seg = torch.rand(3, T, H, W) * 2 - 1
    assert torch.equal(C.given_control("seg", seg, video), seg)


def test_given_controls_raise_clear_errors():
    video = square_video()
    with pytest.raises(ValueError, match="'depth' control needs a depth video"):
        C.given_control("depth", None, video)
    with pytest.raises(ValueError, match="has 2 frames but the input video has 3"):
        C.given_control("depth", torch.zeros(1, 2, H, W), video)
    with pytest.raises(ValueError, match="resize=True"):
        C.given_control("seg", torch.zeros(3, T, H // 2, W // 2), video)
    with pytest.raises(ValueError, match="C in"):
        C.given_control("seg", torch.zeros(2, T, H, W), video)


def test_resize_uses_nearest_for_seg_and_bilinear_for_depth():
    video = square_video()
    labels = torch.zeros(3, T, H // 2, W // 2)
    labels[:, :, :, W // 4:] = 1.0  # two flat regions, -> exactly two colors after nearest resizing
    seg = C.given_control("seg", labels, video, resize=True)
    assert seg.shape == (3, T, H, W) and set(seg.unique().tolist()) == {0.0, 1.0}
    depth = C.given_control("depth", labels[:1], video, resize=True)
    assert depth.shape == (3, T, H, W) and len(depth.unique()) > 2  # bilinear blends the border


# ----------------------------------------------------------------------------- all together
def test_control_inputs_compute_and_check_every_modality():
    video = square_video()
    depth = torch.rand(1, T, H, W) * 2 - 1
    seg = torch.rand(3, T, H, W) * 2 - 1
    out = C.control_inputs(video, ["edge", "vis", "depth", "seg"], control_videos={"depth": depth, "seg": seg})
    assert list(out) == ["edge", "blur", "depth", "seg"]
    for name, v in out.items():
        assert v.shape == (3, T, H, W) and v.dtype == torch.float32, name
        assert v.min() >= -1 and v.max() <= 1, name
    assert torch.equal(out["edge"], C.edge_control(video))
    assert torch.equal(out["blur"], C.blur_control(video))
    # a given edge video is used as is instead of computing one
    given_edge = torch.zeros(3, T, H, W)
    assert torch.equal(C.control_inputs(video, "edge", control_videos={"edge": given_edge})["edge"], given_edge)
    # presets reach the computed controls
    low = C.control_inputs(video, ["edge"], edge_preset="low")["edge"]
    assert torch.equal(low, C.edge_control(video, "low"))


def test_control_inputs_errors():
    video = square_video()
    with pytest.raises(ValueError, match="'seg' control needs"):
        C.control_inputs(video, ["edge", "seg"])
    with pytest.raises(ValueError, match="unknown modality 'normals'"):
        C.control_inputs(video, ["normals"])
    with pytest.raises(ValueError, match="twice"):
        C.control_inputs(video, ["blur", "vis"])
    with pytest.raises(ValueError, match="not among the requested"):
        C.control_inputs(video, ["edge"], control_videos={"depth": torch.zeros(1, T, H, W)})
    with pytest.raises(ValueError, match="empty"):
        C.control_inputs(video, [])


# ----------------------------------------------------------------------------- weights
def test_latent_weight_map_maps_pixel_frames_to_latent_frames():
    mask = torch.zeros(9, 16, 16)  # 9 pixel frames -> 3 latent frames (1 + 4·2)
    mask[0] = 1.0                   # only the first pixel frame is weighted
    out = C.latent_weight_map(mask, (3, 4, 4))
    assert out.shape == (1, 3, 4, 4)
    assert torch.allclose(out[0, 0], torch.ones(4, 4)) and out[0, 1:].abs().max() == 0
    half = torch.zeros(2, 3, 16, 16)
    half[..., :8] = 0.5
    out = C.latent_weight_map(half, (3, 2, 2))  # already latent frame count: spatial resize only
    assert torch.allclose(out[..., 0], torch.full((2, 3, 2), 0.5)) and out[..., 1].abs().max() == 0


def test_latent_weight_map_errors():
    with pytest.raises(ValueError, match="frames"):
        C.latent_weight_map(torch.ones(7, 8, 8), (3, 2, 2))
    with pytest.raises(ValueError, match="negative"):
        C.latent_weight_map(-torch.ones(3, 8, 8), (3, 2, 2))
    with pytest.raises(ValueError, match="float"):
        C.latent_weight_map(torch.ones(3, 8, 8, dtype=torch.uint8), (3, 2, 2))
