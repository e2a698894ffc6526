"""cosmos_models.perf.mfu and the benchmark commands: activation-checkpointing policies (recomputation
measured with FlopCounterMode), part ranges, `cosmos bench train-step` JSON and trace, `cosmos mfu
record|check` against a fresh and a doctored baseline, `cosmos bench kernels --chart`. CPU, tiny."""
import json
import shutil
import subprocess

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cosmos_models as cm
from bench import chart
from cosmos_models.nets import flops
from cosmos_models.perf import baselines, mfu, ranges
from cosmos_models.training import sac
from cosmos_models.cli import main as cosmos

BLOCK_PARTS = ("self_attn_proj", "self_attn_core", "cross_attn_proj", "cross_attn_core", "mlp", "adaln_modulation")
MATMULS = ("aten.mm", "aten.addmm")
ATTENTION = ("cosmos_kernels.flash_attention", "cosmos_kernels.neighborhood_attention_3d")


def _loss_and_grads(model, inputs):
    """Gradients of a fixed loss, and the FLOPs FlopCounterMode sees in the backward pass."""
    model.zero_grad(set_to_none=True)
    x, t, ctx = inputs
    loss = model(x, t, ctx).square().mean()
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return [p.grad.clone() for p in model.parameters()], counts


def test_checkpoint_policies_recompute_what_they_say():
    """The train step's activation checkpointing (cosmos_models.training.sac) keeps the gradients, and the
    backward's extra FLOPs are exactly the recomputed forward, which the MFU does not count as
    useful: full -> every block matmul and attention, predict2_2b_720_aggressive (attention saved)
    -> the matmuls, mm_only -> the attention, linear_selfattn -> the cross-attention core."""
    torch.manual_seed(0)
    base_model = cm.build("tiny-natten")  # the reference kernels: fast on a CPU
    with torch.no_grad():  # the zero-initialized projections carry signal too
        for p in base_model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    latent = (3, 8, 12)
    inputs = (torch.randn(1, 16, *latent), torch.rand(1, latent[0]) * 1000, torch.randn(1, 5, 48))
    count = flops.count(base_model.config, latent=latent, text_len=5)
    parts = count["parts"]
    block_matmul_fwd = sum(parts[p]["forward"] for p in BLOCK_PARTS) - count["attention_forward"]
    base_grads, base = _loss_and_grads(base_model, inputs)
    assert not any(k in base for k in ATTENTION)
    base_mm = sum(base.get(k, 0) for k in MATMULS)
    assert base_mm == count["matmul_backward"]
    recomputed = {"full": (block_matmul_fwd, count["attention_forward"]),
                  "predict2_2b_720_aggressive": (block_matmul_fwd, 0),
                  "mm_only": (0, count["attention_forward"]),
                  "linear_selfattn": (0, parts["cross_attn_core"]["forward"])}
    for policy, (extra_mm, extra_attention) in recomputed.items():
        model = cm.build("tiny-natten")
        model.load_state_dict(base_model.state_dict())
        sac.apply(model, policy)
        grads, counts = _loss_and_grads(model, inputs)
        for g, b in zip(grads, base_grads):
            torch.testing.assert_close(g, b, rtol=1e-5, atol=1e-6)
        assert sum(counts.get(k, 0) for k in MATMULS) - base_mm == extra_mm, policy
        assert sum(counts.get(k, 0) for k in ATTENTION) == extra_attention, policy


def _hooks(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]


def test_part_ranges_time_every_part_and_leave_no_hooks():
    """On the trainer's own step (FSDP2, SAC, EMA) of a Transfer model: every part is timed forward,
    backward and in its recomputation, and the ranges leave the model's hooks (FSDP's) as they were."""
    step = mfu.TrainerStep(mfu.StepSettings("tiny-transfer", sac="full", backend="torch"), "cpu")
    try:
        before = _hooks(step.model)
        parts = ranges.PartRanges(step.model, nvtx=ranges.nvtx_available(), profiler=True, timing=True)
        step.ranges = parts
        with parts:
            loss = step()
            times = parts.times()
        after = _hooks(step.model)
    finally:
        step.close()
    assert torch.isfinite(loss)
    for part in ("self_attn", "cross_attn", "mlp", "final_layer", "control_branch"):
        assert times[part, "fwd"] > 0 and times[part, "bwd"] > 0, part
    for part in ("self_attn", "cross_attn", "mlp"):  # checkpointed blocks run their parts again
        assert times[part, "recompute"] > 0, part
    assert times["patch_embed", "fwd"] > 0 and ("optimizer", "step") in times and ("loss", "step") in times
    assert ("ema", "step") in times and ("flow_inputs", "step") in times
    assert not parts._open and not parts._handles and after == before


def _run_cli(argv, capsys):
    code = cosmos(argv)
    return code, capsys.readouterr()


def test_bench_train_step_writes_json_and_trace(tmp_path, capsys):
    out = tmp_path / "ts.json"
    code, cap = _run_cli(["bench", "train-step", "--config", "tiny", "--resolution", "64x48", "--frames", "9",
                          "--steps", "2", "--warmup", "1", "--breakdown-steps", "1", *(["--nvtx"] if ranges.nvtx_available() else []), "--kernel-backend", "torch",
                          "--trace", str(tmp_path / "trace"), "--out", str(out)], capsys)
    assert code == 0, cap.err
    result = json.loads(out.read_text())
    want = flops.count("tiny", frames=9, height=64, width=48)
    assert result["flops"]["total_train_step"] == want["total_train_step"]
    assert result["flops"]["grid"] == [3, 4, 3]
    assert result["step_time_s"] > 0 and len(result["step_times_s"]) == 2
    assert result["tokens_per_s"] == pytest.approx(36 / result["step_time_s"])
    assert result["tflops"] == pytest.approx(want["total_train_step"] / result["step_time_s"] / 1e12)
    assert result["mfu"] == pytest.approx(result["tflops"] / result["peak"]["tflops"])
    assert result["peak"]["used"].startswith("measured float32") and "CPU" in result["peak"]["used"]
    assert result["mfu_h100"] == pytest.approx(result["tflops"] / 989.4)
    assert result["environment"]["device_type"] == "cpu" and result["environment"]["torch"] == torch.__version__
    assert result["memory"]["peak_rss_bytes"] > 0
    parts = {(r["part"], r["phase"]) for r in result["breakdown"]}
    assert {("self_attn", "fwd"), ("mlp", "bwd"), ("optimizer", "step"), ("other", "-")} <= parts
    trace = json.loads(open(result["trace"]).read())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"block0.self_attn", "block1.mlp.bwd", "optimizer"} <= names
    assert "MFU" in cap.out and "H100 SXM bf16 dense" in cap.out and "CPU figures" in cap.out


def test_mfu_record_then_check(tmp_path, capsys):
    baseline = tmp_path / "cpu.json"
    threads = torch.get_num_threads()
    # one CPU thread: a parallel region on a shared 2-core host waits for its descheduled thread
    quick = ["--kernel-backend", "torch", "--threads", "1", "--steps", "3", "--warmup", "1", "--repeats", "2",
             "--out", str(baseline)]
    code, cap = _run_cli(["mfu", "record", "--config", "tiny", *quick], capsys)
    assert code == 0, cap.err
    code, cap = _run_cli(["mfu", "record", "--config", "tiny-action", *quick, "--append"], capsys)
    assert code == 0, cap.err
    recorded = json.loads(baseline.read_text())
    assert [e["settings"]["config"] for e in recorded["entries"]] == ["tiny", "tiny-action"]
    entry = recorded["entries"][0]
    assert entry["step_time_s"] > 0 and len(entry["step_time_repeats_s"]) == 2 and 0 < entry["mfu"]
    assert entry["settings"]["threads"] == 1 and torch.get_num_threads() == threads  # restored after measuring
    # a loaded 2-core host: generous tolerance for the self-check, a 1000x faster doctored baseline must fail
    code, cap = _run_cli(["mfu", "check", "--baseline", str(baseline), "--tolerance", "400%",
                          "--out", str(tmp_path / "check.json")], capsys)
    assert code == 0, cap.out + cap.err
    assert "tiny-action" in cap.out and "REGRESSION" not in cap.out
    assert len(json.loads((tmp_path / "check.json").read_text())["rows"]) == 2
    doctored = dict(recorded)
    doctored["entries"] = [dict(entry, step_time_s=entry["step_time_s"] / 1000), recorded["entries"][1]]
    (tmp_path / "fast.json").write_text(json.dumps(doctored))
    code, cap = _run_cli(["mfu", "check", "--baseline", str(tmp_path / "fast.json"), "--tolerance", "400%"], capsys)
    assert code == 1
    assert "REGRESSION" in cap.out and "regressed" in cap.err
    other = dict(recorded, environment=dict(recorded["environment"], device="NVIDIA H100 80GB HBM3"))
    (tmp_path / "h100.json").write_text(json.dumps(other))
    code, cap = _run_cli(["mfu", "check", "--baseline", str(tmp_path / "h100.json")], capsys)
    assert code == 2 and "not comparable" in cap.err


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_train_step_context_parallel_two_processes(tmp_path):
    out = tmp_path / "cp2.json"
    proc = subprocess.run(["torchrun", "--nproc-per-node", "2", "-m", "cosmos_models.cli", "bench", "train-step",
                           "--config", "tiny", "--cp", "2", "--frames", "5", "--steps", "2", "--warmup", "1",
                           "--breakdown-steps", "0", "--kernel-backend", "torch", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["flops"]["total_train_step"] == flops.count("tiny", frames=5, cp=2)["total_train_step"]
    assert result["tokens_per_s_per_device"] == pytest.approx(result["tokens_per_s"] / 2)


def test_settings_and_arguments_are_checked():
    with pytest.raises(ValueError, match="cannot be laid out"):
        mfu.measure(mfu.StepSettings("tiny", frames=5, cp=2), "cpu")
    with pytest.raises(ValueError, match="checkpointing policy 'everything'"):
        mfu.StepSettings("tiny", sac="everything")
    with pytest.raises(ValueError, match="resolution='1080i'"):
        mfu.StepSettings("tiny", resolution="1080i")
    with pytest.raises(ValueError, match="multiples of 16"):
        mfu.StepSettings("tiny", resolution="60x64").flops()
    with pytest.raises(ValueError, match="steps"):
        mfu.StepSettings("tiny", steps=0)
    assert mfu.StepSettings("predict2.5-2b", resolution="480p").pixels() == (93, 480, 832)
    assert baselines.parse_tolerance("3%") == pytest.approx(0.03) and baselines.parse_tolerance("0.5") == 0.5
    with pytest.raises(ValueError, match="percentage"):
        baselines.parse_tolerance("three")


def test_speedups_pick_best_of_ours_and_peers():
    rows = [dict(op="a", shape="s", dtype="f", impl="ours:triton", ms=2.0, rel_err=0.0, ok=True),
            dict(op="a", shape="s", dtype="f", impl="ours:cuda", ms=1.0, rel_err=0.0, ok=True),
            dict(op="a", shape="s", dtype="f", impl="ours:torch", ms=0.1, rel_err=1.0, ok=False),  # failed: not ours
            dict(op="a", shape="s", dtype="f", impl="torch.compile", ms=3.0),
            dict(op="a", shape="s", dtype="f", impl="sdpa", ms=None),
            dict(op="a", shape="s", dtype="f", impl="model@peak", ms=0.01),  # analytic bound, not a peer
            dict(op="b", shape="s", dtype="f", impl="ours:triton", ms=1.0, rel_err=0.0, ok=True)]  # no peer
    assert chart.speedups(rows) == [dict(op="a", shape="s", dtype="f", ours="ours:cuda", ours_ms=1.0,
                                         peer="torch.compile", peer_ms=3.0, speedup=3.0)]
    with pytest.raises(ValueError, match="nothing to chart"):
        chart.speedup_chart(rows[-1:], "unused.png", "t")


def test_bench_kernels_writes_json_and_chart(tmp_path, capsys, monkeypatch):
    out, png = tmp_path / "k.json", tmp_path / "k.png"
    code, cap = _run_cli(["bench", "kernels", "--only", "ulysses", "--out", str(out), "--chart", str(png)], capsys)
    assert code == 0, cap.err
    rows = json.loads(out.read_text())["rows"]
    assert any(r["impl"].startswith("ours:") for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a family that fails still leaves the JSON of what ran, with the error
    import bench.ulysses
    monkeypatch.setattr(bench.ulysses, "run", lambda device, quick, rows=None: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cosmos(["bench", "kernels", "--only", "ulysses", "--out", str(out)])
    assert "ZeroDivisionError" in json.loads(out.read_text())["error"]


def test_check_without_baseline_file(capsys):
    code, cap = _run_cli(["mfu", "check", "--baseline", "/nonexistent/cpu.json"], capsys)
    assert code == 2 and "/nonexistent/cpu.json" in cap.err


def test_nvtx_ranges_on_a_torch_without_nvtx_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(ranges, "nvtx_available", lambda: False)
    with pytest.raises(ValueError, match="no NVTX binding"):
        ranges.PartRanges(torch.nn.Linear(2, 2), nvtx=True)


def test_lora_step_is_measured_with_its_own_useful_flops():
    pytest.importorskip("peft")
    settings = mfu.StepSettings("tiny", steps=2, warmup=1, lora="4")
    result = mfu.measure(settings, "cpu")
    assert "lora=4" in result["label"] and result["step_time_s"] > 0 and result["memory"]
    flops = result["flops"]
    # the frozen weights' gradient matmuls are not done: one forward's matmul FLOPs fewer
    assert flops["useful_train_step"] == flops["total_train_step"] - flops["matmul_forward"]
    with pytest.raises(ValueError, match="--lora"):
        mfu.StepSettings("tiny", lora="x")
