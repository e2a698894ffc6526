"""Video data: clip shape/range, fps resampling by timestamps, resize + center crop, sidecar text and
cached latents, bad files skipped with one warning, exact resume, disjoint covering rank shards,
joint image/video batches, synthetic videos."""
import os
import warnings

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
pytest.importorskip("av", reason="PyAV is not installed")

from cosmos_models.data import clips as D  # noqa: E402
from cosmos_models.data import video_io as V  # noqa: E402
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    paths = D.make_synthetic_videos(root, n=5, frames=24, size=(48, 64), fps=16, seed=0)
    return str(root), paths


def counter_video(path, frames, fps, h=16, w=16):
    """Frame k is uniform gray 10 + 7k, so a decoded frame tells its index."""
    video = torch.zeros(frames, h, w, 3, dtype=torch.uint8)
    for k in range(frames):
        video[k] = 10 + 7 * k
    V.write_video(path, video, fps, layout="THWC", crf=0)
    torch.save(torch.zeros(2, 4), os.path.splitext(path)[0] + ".pt")


def frame_indices(clip):
    gray = (clip.float() + 1) * 127.5  # back to 0..255
    return [round((v - 10) / 7) for v in gray.mean(dim=(0, 2, 3)).tolist()]


def record():
    ctx = warnings.catch_warnings(record=True)
    caught = ctx.__enter__()
    warnings.simplefilter("always")
    return ctx, caught


def skipped(caught, name):
    return [w for w in caught if issubclass(w.category, D.DataWarning) and name in str(w.message)]


# ----------------------------------------------------------------------------- clips
def test_clip_shape_range_and_text(synthetic):
    root, paths = synthetic
    ds = D.ClipDataset(root, num_frames=9, fps=16, resolution=(32, 48), text_len=12)
    assert len(ds) == 5 and ds.files == sorted(paths)
    item = ds[(0, 2)]
    assert item["video"].shape == (3, 9, 32, 48) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1 and item["video"].std() > 0.05
    text = torch.load(os.path.splitext(paths[2])[0] + ".pt")
    assert item["text"].shape == (12, 48)
    assert torch.equal(item["text"][:8], text) and item["text"][8:].abs().sum() == 0  # zero-padded
    assert torch.equal(D.ClipDataset(root, num_frames=9, resolution=(32, 48), text_len=5)[2]["text"], text[:5])


def test_resolution_table():
    assert D.RESOLUTIONS == {"256p": (192, 320), "480p": (480, 832), "720p": (704, 1280)}
    assert D.resolve_resolution("480p") == (480, 832) and D.resolve_resolution((64, 96)) == (64, 96)
    with pytest.raises(ValueError, match="1080p"):
        D.resolve_resolution("1080p")


def test_fps_resampling_by_timestamps(tmp_path):
    path = str(tmp_path / "count.mp4")
    counter_video(path, 33, fps=32)
    start = D.ClipDataset(tmp_path, num_frames=9, fps=16, resolution=(16, 16), clip_start="start")
    assert frame_indices(start[0]["video"]) == list(range(0, 17, 2))  # 32 -> 16 fps: every other frame
    up = D.ClipDataset(tmp_path, num_frames=8, fps=64, resolution=(16, 16), clip_start="start")
    assert frame_indices(up[0]["video"]) == [0, 0, 1, 1, 2, 2, 3, 3]  # 32 -> 64 fps: each frame twice
    rand = D.ClipDataset(tmp_path, num_frames=9, fps=16, resolution=(16, 16), clip_start="random", seed=3)
    starts = set()
    for epoch in range(6):
        got = frame_indices(rand[(epoch, 0)]["video"])
        assert got == list(range(got[0], got[0] + 17, 2)) and got[-1] <= 32
        starts.add(got[0])
    assert len(starts) > 1  # the clip start changes with the epoch...
    assert rand[(4, 0)]["video"].equal(rand[(4, 0)]["video"])  # ...and is a function of (seed, epoch, index)


def test_resize_keeps_aspect_and_center_crops(tmp_path):
    rgb = np.zeros((8, 48, 96, 3), np.uint8)
    rgb[:, :, :24] = (255, 0, 0)   # outer quarters red | blue, center half green
    rgb[:, :, 24:72] = (0, 255, 0)
    rgb[:, :, 72:] = (0, 0, 255)
    V.write_video(tmp_path / "wide.mp4", torch.from_numpy(rgb), 8, layout="THWC", crf=0)
    torch.save(torch.zeros(1, 4), tmp_path / "wide.pt")
    clip = D.ClipDataset(tmp_path, num_frames=1, resolution=(32, 32), clip_start="start")[0]["video"]
    assert clip.shape == (3, 1, 32, 32)
    # 48x96 -> 32x64 (shorter side to 32) -> center 32x32: only the green half remains
    assert (clip[:, 0, :, 2:-2] - torch.tensor([-1.0, 1.0, -1.0])[:, None, None]).abs().max() < 0.1
    assert D._cover_size(48, 96, 32, 32) == (32, 64) and D._cover_size(100, 50, 704, 1280) == (2560, 1280)


def test_other_containers_and_text_formats(tmp_path):
    video = D._moving_shapes(12, 32, 32, torch.Generator().manual_seed(0))
    V.write_video(tmp_path / "a.mkv", video, 16, layout="THWC")
    V.write_video(tmp_path / "b.webm", video, 16, layout="THWC", codec="libvpx-vp9")
    V.write_video(tmp_path / "c.mp4", video, 16, layout="THWC")
    text = torch.randn(3, 4)
    np.save(tmp_path / "a.npy", text.numpy())
    from safetensors.torch import save_file
    save_file({"embedding": text, "other": torch.zeros(1)}, str(tmp_path / "b.safetensors"))
    torch.save({"embedding": text.to(torch.bfloat16)}, tmp_path / "c.pt")
    ds = D.ClipDataset(tmp_path, num_frames=9, fps=16, resolution=(32, 32), text_len=4)
    assert [os.path.basename(f) for f in ds.files] == ["a.mkv", "b.webm", "c.mp4"]
    for i in range(3):
        item = ds[i]
        assert item["video"].shape == (3, 9, 32, 32)
        torch.testing.assert_close(item["text"][:3].float(), text, atol=1e-2, rtol=1e-2)
    assert ds[2]["text"].dtype == torch.bfloat16  # the stored dtype is kept


# ----------------------------------------------------------------------------- bad files, latents
def test_corrupt_and_short_files_are_skipped_with_one_warning(tmp_path, synthetic):
    _, paths = synthetic
    for p in paths[:2]:
        for suffix in (".mp4", ".pt"):
            src = os.path.splitext(p)[0] + suffix
            with open(src, "rb") as f, open(tmp_path / os.path.basename(src), "wb") as g:
                g.write(f.read())
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save(torch.zeros(2, 48), tmp_path / "corrupt.pt")
    V.write_video(tmp_path / "short.mp4", torch.zeros(3, 48, 64, 3, dtype=torch.uint8), 16, layout="THWC")
    torch.save(torch.zeros(2, 48), tmp_path / "short.pt")
    V.write_video(tmp_path / "notext.mp4", torch.zeros(24, 48, 64, 3, dtype=torch.uint8), 16, layout="THWC")

    ctx, caught = record()
    try:
        ds = D.ClipDataset(tmp_path, num_frames=9, fps=16, resolution=(32, 32), text_len=4)
        batches = [b for _, b in zip(range(4), D.ClipLoader(ds, 2))]
    finally:
        ctx.__exit__(None, None, None)
    assert len(ds) == 2 and all(b["video"].shape == (2, 3, 9, 32, 32) for b in batches)
    for name in ("corrupt.mp4", "short.mp4", "notext.mp4"):
        assert len(skipped(caught, name)) == 1, [str(w.message) for w in caught]
    assert "too short" in str(skipped(caught, "short.mp4")[0].message)

    # another dataset of this process over the same files (the latent cache, the image batches) says nothing new
    ctx, caught = record()
    try:
        D.ClipDataset(tmp_path, num_frames=9, fps=16, resolution=(32, 32), text_len=4)
    finally:
        ctx.__exit__(None, None, None)
    assert not [w for w in caught if issubclass(w.category, D.DataWarning)]

    # without the probe a bad file is found when read: None, one warning however often it is read,
    # also when DataLoader workers read it (each epoch has new workers; the main process warns)
    again = tmp_path / "again"
    again.mkdir()
    for f in os.listdir(tmp_path):
        if os.path.isfile(tmp_path / f):
            os.link(tmp_path / f, again / f)
    for workers in (0, 2):
        folder = again / f"w{workers}"
        folder.mkdir()
        for f in os.listdir(again):
            if os.path.isfile(again / f):
                os.link(again / f, folder / f)
        ctx, caught = record()
        try:
            lazy = D.ClipDataset(folder, num_frames=9, fps=16, resolution=(32, 32), text_len=4,
                                 extensions=(".mp4",), probe=False)
            if workers == 0:
                bad = lazy.files.index(str(folder / "corrupt.mp4"))
                short = lazy.files.index(str(folder / "short.mp4"))
                assert lazy[bad] is None and lazy[(1, bad)] is None and lazy[short] is None and lazy[short] is None
            batches = [b for _, b in zip(range(6), D.ClipLoader(lazy, 5, shuffle=False, num_workers=workers))]
        finally:
            ctx.__exit__(None, None, None)
        assert [b["video"].shape[0] for b in batches] == [2] * 6  # 5 files, 3 bad: each batch 2 items
        assert all("skipped" not in b for b in batches)
        for name in ("corrupt.mp4", "short.mp4", "notext.mp4"):
            assert len(skipped(caught, f"w{workers}/{name}")) == 1, (workers, [str(w.message) for w in caught])


def test_aspect_buckets_follow_the_official_tables():
    assert D.aspect_key(1280, 720) == "16,9" and D.aspect_key(640, 480) == "4,3" and D.aspect_key(500, 500) == "1,1"
    assert D.aspect_key(480, 640) == "3,4" and D.aspect_key(720, 1280) == "9,16" and D.aspect_key(1500, 1000) == "4,3"
    assert D.aspect_buckets("720p") == D.ASPECT_BUCKETS["720p"] == D.aspect_buckets((704, 1280))
    assert D.aspect_buckets("480p")["16,9"] == D.RESOLUTIONS["480p"] and D.aspect_buckets("480p")["1,1"] == (640, 640)
    for table in D.ASPECT_BUCKETS.values():
        assert all(h % 16 == 0 and w % 16 == 0 for h, w in table.values())
    small = D.aspect_buckets("64x64")  # another size: about its pixel count, sides multiples of 16
    assert small["1,1"] == (64, 64) and small["16,9"][1] > small["16,9"][0] and small["9,16"][0] > small["9,16"][1]
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in small.values())


def test_bucketed_clips_keep_their_aspect_and_batches_hold_one_bucket(tmp_path):
    """Landscape, square and portrait clips: each decoded at its bucket's size (not cropped to the stage
    size), every batch one bucket, the same batches after a resume, and the position reshards only at
    the same global batch."""
    for i, size in enumerate([(48, 96), (64, 64), (96, 48)]):  # 2:1 -> 16:9, square, portrait -> 9:16
        D.make_synthetic_videos(tmp_path / f"s{i}", n=4, frames=9, size=size, fps=16, seed=i)
    ds = D.ClipDataset(tmp_path, num_frames=5, fps=16, resolution="64x64", text_len=8, buckets=True)
    table = D.aspect_buckets("64x64")
    assert {ds.clip_size(i) for i in range(len(ds))} == {table["16,9"], table["1,1"], table["9,16"]}
    item = ds[[i for i, f in enumerate(ds.files) if "/s2/" in f][0]]
    assert item["video"].shape == (3, 5, *table["9,16"])
    loader = D.ClipLoader(ds, 2, seed=3)
    keys = loader.batches(0)
    assert len(keys) == 6 and sorted(i for batch in keys for _, i in batch) == list(range(12))
    for batch in keys:
        assert len({ds.clip_size(i) for _, i in batch}) == 1
    it = iter(loader)
    sizes = [tuple(next(it)["video"].shape[-2:]) for _ in range(3)]
    assert sizes == [ds.clip_size(batch[0][1]) for batch in keys[:3]]
    state = loader.state_dict()
    expected = [next(it)["index"].tolist() for _ in range(3)]
    again = D.ClipLoader(ds, 2, seed=3)
    again.load_state_dict(state)
    assert [b["index"].tolist() for b, _ in zip(again, range(3))] == expected
    # two ranks of one global batch of 2x2: the global batches are the same clips as one rank's 4
    ranks = [D.ClipLoader(ds, 2, rank=r, world_size=2, seed=3).batches(0) for r in range(2)]
    single = D.ClipLoader(ds, 4, seed=3).batches(0)
    assert [sorted(i for _, i in a + b) for a, b in zip(*ranks)] == [sorted(i for _, i in s) for s in single]
    two_ranks = D.ClipLoader(ds, 2, rank=0, world_size=2, seed=3)
    two_ranks.position = 2
    assert D.ClipLoader(ds, 4, seed=3).resharded(two_ranks.state_dict())["position"] == 2
    with pytest.raises(ValueError, match="global batch must stay"):
        D.ClipLoader(ds, 2, seed=3).resharded(D.ClipLoader(ds, 4, seed=3).state_dict())
    with pytest.raises(ValueError, match="bucketed"):
        D.ClipLoader(ds, 2, seed=3).load_state_dict({**state, "bucketed": False})
    with pytest.raises(ValueError, match="no aspect bucket holds one global batch"):
        D.ClipLoader(ds, 5, seed=3)


def test_cached_latents_skip_decoding(tmp_path):
    V.write_video(tmp_path / "a.mp4", torch.zeros(9, 32, 32, 3, dtype=torch.uint8), 16, layout="THWC")
    (tmp_path / "b.mp4").write_bytes(b"not a video")  # never decoded: its latent is cached
    for name in ("a", "b"):
        torch.save(torch.zeros(2, 4), tmp_path / f"{name}.pt")
    latent = torch.randn(16, 3, 4, 4)  # 9 frames -> 3 latent frames, 32 px -> 4 latents
    torch.save(latent, tmp_path / "b.latent.pt")
    torch.save({"latent": torch.randn(16, 2, 4, 4)}, tmp_path / "a.latent.pt")  # wrong T: decode a.mp4
    ctx, caught = record()
    try:
        ds = D.ClipDataset(tmp_path, num_frames=9, fps=16, resolution=(32, 32), text_len=2)
        a, b = ds[0], ds[1]
    finally:
        ctx.__exit__(None, None, None)
    assert torch.equal(b["latent"], latent) and "video" not in b
    assert a["video"].shape == (3, 9, 32, 32) and len(skipped(caught, "a.latent.pt")) == 1
    assert D.collate([b, None, b])["latent"].shape == (2, 16, 3, 4, 4)
    with pytest.raises(ValueError, match="mixes cached latents"):
        D.collate([b, a])
    assert "latent" not in D.ClipDataset(tmp_path, num_frames=9, resolution=(32, 32), use_latents=False,
                                         text_len=2, probe=False)[0]


# ----------------------------------------------------------------------------- order, shards, resume
@pytest.mark.parametrize("size,world,even", [(10, 4, False), (12, 4, True), (10, 3, True)])
def test_rank_shards_are_disjoint_and_covering(size, world, even):
    for epoch in (0, 1):
        shards = [D.ShardedSampler(size, rank=r, world_size=world, seed=5, even=even).indices(epoch)
                  for r in range(world)]
        flat = [i for s in shards for i in s]
        assert len(flat) == len(set(flat))  # disjoint
        if even:
            assert len({len(s) for s in shards}) == 1 and len(flat) == size - size % world
        else:
            assert sorted(flat) == list(range(size))  # covering
    sampler = D.ShardedSampler(size, rank=0, world_size=world, seed=5, even=even)
    assert sampler.indices(0) != sampler.indices(1) or size < 4  # reshuffled per epoch
    assert sampler.indices(1) == D.ShardedSampler(size, rank=0, world_size=world, seed=5, even=even).indices(1)
    if not even:
        return
    covered = set()  # with even shards, the dropped remainder changes per epoch
    for epoch in range(8):
        covered |= {i for r in range(world)
                    for i in D.ShardedSampler(size, rank=r, world_size=world, seed=5).indices(epoch)}
    assert covered == set(range(size))


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out


def test_resume_mid_epoch_gives_the_same_next_batches(synthetic):
    root, _ = synthetic
    make = lambda: D.ClipLoader(D.ClipDataset(root, num_frames=5, fps=16, resolution=(16, 16), text_len=8),
                                batch_size=2, seed=11)  # noqa: E731
    loader = make()
    it = iter(loader)
    for _ in range(3):  # 5 items, 2 batches an epoch: this crosses into epoch 1
        next(it)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["position"] == 1
    expected = [next(it) for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(state)
    got = _take(resumed, 3)
    for e, g in zip(expected, got):
        assert torch.equal(e["index"], g["index"]) and torch.equal(e["video"], g["video"])
        assert torch.equal(e["text"], g["text"])
    with pytest.raises(ValueError, match="seed"):
        make().load_state_dict({**state, "seed": 12})


def test_worker_processes_give_the_same_batches(synthetic):
    root, _ = synthetic
    ds = D.ClipDataset(root, num_frames=5, fps=16, resolution=(16, 16), text_len=8)
    serial = _take(D.ClipLoader(ds, 2, seed=3, rank=1, world_size=2), 2)
    parallel = _take(D.ClipLoader(ds, 2, seed=3, rank=1, world_size=2, num_workers=2), 2)
    for a, b in zip(serial, parallel):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])


def test_joint_image_video_batches(tmp_path, synthetic):
    root, _ = synthetic
    for i in range(3):
        rgb = np.full((40, 60, 3), 40 * i, np.uint8)
        assert cv2.imwrite(str(tmp_path / f"img{i}.png"), rgb)
        torch.save(torch.ones(3, 48), tmp_path / f"img{i}.pt")
    images = D.image_dataset(tmp_path, resolution=(16, 16), text_len=8)
    firsts = D.image_dataset(root, source="videos", resolution=(16, 16), text_len=8)
    assert images[1]["video"].shape == (3, 1, 16, 16) and firsts[0]["video"].shape == (3, 1, 16, 16)
    assert abs(((images[1]["video"] + 1) * 127.5).mean().item() - 40) < 1.5
    videos = D.ClipDataset(root, num_frames=5, fps=16, resolution=(16, 16), text_len=8)

    def make():
        return D.JointLoader(D.ClipLoader(videos, 2, seed=1), D.ClipLoader(images, 2, seed=2), image_prob=0.3, seed=4)

    joint = make()
    it = iter(joint)
    first = [next(it) for _ in range(6)]
    assert [b["is_image"] for b in first] == [joint.is_image_step(s) for s in range(6)]
    for b in first:
        assert b["video"].shape[2] == (1 if b["is_image"] else 5) and b["text"].shape == (2, 8, 48)
    state = joint.state_dict()
    expected = [next(it) for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(state)
    for e, g in zip(expected, _take(resumed, 5)):
        assert e["is_image"] == g["is_image"] and torch.equal(e["video"], g["video"])
    steps = [joint.is_image_step(s) for s in range(4000)]
    assert abs(sum(steps) / 4000 - 0.3) < 0.03
    with pytest.raises(ValueError, match="shapes differ"):
        D.collate([images[0], videos[0]])


def test_synthetic_videos_are_deterministic(tmp_path):
    a = D.make_synthetic_videos(tmp_path / "a", n=2, frames=6, size=32, fps=8, seed=7)
    b = D.make_synthetic_videos(tmp_path / "b", n=2, frames=6, size=32, fps=8, seed=7)
    va, fps = V.read_video(a[1], dtype=torch.uint8)
    vb, _ = V.read_video(b[1], dtype=torch.uint8)
    assert fps == 8 and va.shape == (3, 6, 32, 32) and torch.equal(va, vb)
    assert open(a[0], "rb").read() == open(b[0], "rb").read()  # byte-identical files
    assert not torch.equal(va[:, 0], va[:, -1])  # the shapes move
    assert torch.equal(torch.load(a[1].replace(".mp4", ".pt")), torch.load(b[1].replace(".mp4", ".pt")))
    with pytest.raises(ValueError, match="even"):
        D.make_synthetic_videos(tmp_path / "c", n=1, size=(31, 32))
