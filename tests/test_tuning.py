"""The tuner and its cache (cosmos_kernels.tuning, `cosmos tune`): a fake timer picks the winner,
the winner is written atomically and read back by the kernels at launch, inaccurate or failing
candidates are dropped, and a corrupt, stale or foreign cache falls back to the built-in tables
with one warning, never a crash."""
import importlib
import json
import warnings

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import tuning
from cosmos_kernels.reference import flash_attention as ref
from cosmos_kernels.testing import assert_close

fa = importlib.import_module("cosmos_kernels.triton.flash_attention")
SHAPE = (1, 70, 70, 1, 64)  # (B, S_q, S_k, H, D): two query tiles of 64, a ragged key tail


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    monkeypatch.setenv("COSMOS_KERNELS_TUNE_CACHE", str(path))
    monkeypatch.setattr(tuning, "SHIPPED_DIR", tmp_path / "shipped")
    tuning.reload()
    yield path
    tuning.reload()


def _fake_timer(times_by_label):
    """Runs fn once (as a real timer would) and returns the time the test assigns its candidate."""
    calls = []

    def timer(fn):
        fn()
        calls.append(1)
        return times_by_label.pop(0)
    return timer, calls


def test_the_fastest_accurate_candidate_is_cached_and_then_launched(cache, monkeypatch):
    dtype = torch.bfloat16
    timer, calls = _fake_timer([5.0, 4.0, 1.0, 3.0])  # the default, then three candidates: the 2nd wins
    outcome = fa.tune("fwd", SHAPE, dtype, "cpu", timer=timer, max_candidates=3)
    assert len(calls) == 4 and not outcome.entry.rejected
    winner = outcome.winner
    assert winner == fa.candidates("fwd", dtype)[1] != fa.config("fwd", 64, dtype)
    assert outcome.entry.ms == 1.0 and outcome.entry.default_ms == 5.0
    tuning.write_entries({outcome.key: outcome.entry})
    assert json.loads(cache.read_text())["entries"][outcome.key]["blocks"]["m"] == winner.m

    used = []
    choose = fa.choose
    monkeypatch.setattr(fa, "choose", lambda *a: used.append(choose(*a)) or used[-1])
    q, k, v = (torch.randn(1, 70, 1, 64, dtype=dtype) for _ in range(3))
    out = ck.flash_attention(q, k, v, backend="triton")
    assert used == [winner], "the launch did not take the tuned configuration"
    assert_close(out, ref.attention(q, k, v), dtype)
    # another sequence-length bucket, head dim or dtype is not this entry: the built-in table
    assert fa.choose("fwd", 64, dtype, 70, 1000, "cpu") == fa.config("fwd", 64, dtype)
    assert fa.choose("fwd", 64, torch.float16, 70, 70, "cpu") == fa.config("fwd", 64, torch.float16)


def test_backward_kernels_tune_and_read_back(cache):
    timer, _ = _fake_timer([2.0, 1.0])
    outcome = fa.tune("dq", SHAPE, torch.float32, "cpu", timer=timer, max_candidates=1)
    tuning.write_entries({outcome.key: outcome.entry})
    assert fa.choose("dq", 64, torch.float32, 70, 70, "cpu") == outcome.winner == fa.candidates("dq", torch.float32)[0]


def test_inaccurate_and_failing_candidates_are_dropped_before_timing():
    good, bad_numbers, crash = fa.Blocks(64, 64, 4, 2), fa.Blocks(128, 64, 4, 2), fa.Blocks(128, 128, 8, 3)

    def run(cfg):
        if cfg == crash:
            raise RuntimeError("out of resources: shared memory")
        return cfg

    timed = []
    outcome = tuning.tune("fwd", (1, 8, 8, 1, 16), torch.bfloat16, "cpu", seq_len=8,
                          candidates=[bad_numbers, crash], default=good, run=run,
                          error=lambda out: float("nan") if out == bad_numbers else 0.0, tolerance=1e-2,
                          timer=lambda fn: timed.append(fn()) or 1.0)
    assert outcome.winner == good and timed == [good], "only the accurate candidate may be timed"
    assert "relative error nan" in outcome.entry.rejected[tuning.label_of(bad_numbers)]
    assert "out of resources" in outcome.entry.rejected[tuning.label_of(crash)]
    with pytest.raises(RuntimeError, match="no candidate of fwd ran accurately"):
        tuning.tune("fwd", (1, 8, 8, 1, 16), torch.bfloat16, "cpu", seq_len=8, candidates=[], default=crash,
                    run=run, error=lambda out: 0.0, tolerance=1e-2, timer=lambda fn: 1.0)


@pytest.mark.parametrize("content, words", [
    ("{not json", "is unreadable"),
    (json.dumps({"schema": 999, "entries": {}}), "has schema 999"),
    (json.dumps([1, 2]), "has schema 'list'"),
])
def test_a_corrupt_or_stale_cache_warns_once_and_falls_back(cache, content, words):
    cache.write_text(content)
    tuning.reload()
    with pytest.warns(RuntimeWarning, match=words) as record:
        assert fa.choose("fwd", 64, torch.bfloat16, 70, 70, "cpu") == fa.config("fwd", 64, torch.bfloat16)
        fa.choose("fwd", 64, torch.bfloat16, 70, 70, "cpu")
    assert len([w for w in record if "tuning cache" in str(w.message)]) == 1
    assert str(cache) in str(record[0].message) and "cosmos tune" in str(record[0].message)


@pytest.mark.parametrize("blocks, words", [
    ({"m": 64, "n": 64, "warps": 4, "stages": 2, "variant": "tma_ws9"}, "does not offer"),
    ({"m": 48, "n": 64, "warps": 4, "stages": 2}, "malformed"),
    ({"m": 64, "warps": 4}, "malformed"),
])
def test_an_entry_this_library_cannot_launch_is_skipped_with_a_warning(cache, blocks, words):
    key = tuning.key("fwd", torch.bfloat16, 64, 70, "cpu")
    cache.write_text(json.dumps({"schema": tuning.SCHEMA, "entries": {key: {"blocks": blocks, "ms": 1.0}}}))
    tuning.reload()
    with pytest.warns(RuntimeWarning, match=words):
        assert fa.choose("fwd", 64, torch.bfloat16, 70, 70, "cpu") == fa.config("fwd", 64, torch.bfloat16)


def test_entries_of_another_triton_or_device_are_not_used(cache):
    entry = {"blocks": {"m": 64, "n": 32, "warps": 4, "stages": 2, "variant": "fa2"}, "ms": 1.0}
    key = tuning.key("fwd", torch.bfloat16, 64, 70, "cpu")
    other_triton = key.rsplit("|", 1)[0] + "|triton-0.0.1"
    other_device = key.replace("|cpu|", "|NVIDIA H100 80GB HBM3|")
    cache.write_text(json.dumps({"schema": tuning.SCHEMA, "entries": {other_triton: entry, other_device: entry}}))
    tuning.reload()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fa.choose("fwd", 64, torch.bfloat16, 70, 70, "cpu") == fa.config("fwd", 64, torch.bfloat16)


def test_shipped_files_are_read_after_the_user_cache(cache, tmp_path):
    key = tuning.key("fwd", torch.bfloat16, 64, 70, "cpu")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    entry = lambda m: {"blocks": {"m": m, "n": 32, "warps": 4, "stages": 2}, "ms": 1.0}  # noqa: E731
    (shipped / "gpu.json").write_text(json.dumps({"schema": tuning.SCHEMA, "entries": {key: entry(64)}}))
    tuning.reload()
    assert fa.choose("fwd", 64, torch.bfloat16, 70, 70, "cpu") == fa.Blocks(64, 32, 4, 2)
    cache.write_text(json.dumps({"schema": tuning.SCHEMA, "entries": {key: entry(128)}}))
    tuning.reload()
    assert fa.choose("fwd", 64, torch.bfloat16, 70, 70, "cpu") == fa.Blocks(128, 32, 4, 2)


def test_a_failed_write_keeps_the_previous_cache(cache, monkeypatch):
    tuning.write_entries({"a": tuning.Entry(blocks={"m": 64}, ms=1.0, default_ms=None)})
    before = cache.read_text()

    def broken_dump(*a, **k):
        raise OSError("No space left on device")
    monkeypatch.setattr(tuning.json, "dump", broken_dump)
    with pytest.raises(OSError, match="No space"):
        tuning.write_entries({"b": tuning.Entry(blocks={"m": 128}, ms=1.0, default_ms=None)})
    assert cache.read_text() == before
    assert [p.name for p in cache.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_cosmos_tune_on_the_interpreter_writes_the_cache(cache, capsys):
    from cosmos_models.cli import main

    assert main(["tune", "--device", "cpu", "--shapes", "1x40x40x1x32", "--kernels", "fwd,bwd_fused",
                 "--dtype", "fp32", "--max-candidates", "1", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "not a GPU measurement" in out and "2 entries written" in out
    entries = json.loads(cache.read_text())["entries"]
    assert sorted(k.split("|")[0] for k in entries) == ["bwd_fused", "fwd"]


@pytest.mark.parametrize("argv, words", [
    (["--shapes", "2b-1080p"], "neither a named shape"),
    (["--kernels", "fwd,bogus"], "not among"),
    (["--ops", "rope"], "covers flash_attention"),
])
def test_cosmos_tune_bad_arguments_are_one_line(argv, words, capsys):
    from cosmos_models.cli import main

    assert main(["tune", "--device", "cpu", *argv]) != 0
    assert words in capsys.readouterr().err
