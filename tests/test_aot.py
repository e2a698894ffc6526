"""The sm_90a compile report: every Triton kernel of the library at its H100 launch configs and
every csrc/*.cu kernel compile for Hopper without a GPU, with no spills and wgmma where tl.dot is."""
import json
import subprocess
import sys

from cosmos_kernels import aot

FAMILIES = ("adaln", "rope", "flash_attention", "neighborhood_attention", "ulysses")
CUDA_SOURCES = ("adaln.cu", "rope.cu")


def test_full_report_passes(tmp_path):
    out = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "cosmos_kernels.aot", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())
    names = [r["kernel"] for r in rows]
    for fam in FAMILIES:
        assert any(n.startswith(fam) for n in names), f"no {fam} kernel in the report"
    for src in CUDA_SOURCES:
        assert any(n.startswith(src) for n in names), f"no {src} kernel in the report"
    for r in rows:
        assert r["spill_bytes"] == 0 and r["registers"] is not None and not r["problems"], r
    attention = [r for r in rows if r["kernel"].startswith(("flash_attention", "neighborhood_attention"))
                 and "delta" not in r["kernel"] and "pre" not in r["kernel"]]
    assert attention and all(r["wgmma"] for r in attention)
    # the Hopper variants: TMA copies in every one, a warp-specialized loop in the _ws ones, and
    # the boolean `tma` field on every row (False where the kernel moves data by pointers)
    assert all(isinstance(r["tma"], bool) for r in rows)
    hopper = {r["kernel"]: r for r in rows if "_tma" in r["kernel"] and r["kernel"].startswith("flash_attention:")}
    for dtype in ("bf16", "fp16"):
        for d in (64, 128):
            for kernel, offered in (("fwd", ("tma", "tma_ws")), ("jvp", ("tma", "tma_ws")), ("bwd_dkdv", ("tma",)),
                                    ("bwd_dq", ("tma",))):
                for variant in offered:
                    r = hopper.get(f"flash_attention:{kernel}_{variant}[{dtype},D={d}]")
                    assert r is not None, f"no {variant} {kernel} for {dtype} D={d} in the report"
                    assert r["wgmma"] and r["tma"] and r["spill_bytes"] == 0, r
                    assert r["warp_specialized"] == (variant == "tma_ws"), r
    # the widened JVP tile: 64-key blocks at D=128 (the FA2 JVP needs 32 there), spill-free
    assert "BLOCK_N=64" in hopper["flash_attention:jvp_tma[bf16,D=128]"]["config"]
    assert not any(r["tma"] for r in rows if r["kernel"].startswith("flash_attention:fwd[")), \
        "the FA2 forward should move data by pointers, not TMA"
    assert any(r["kernel"].startswith("flash_attention:bwd_fused[bf16,D=128]") for r in rows)


def test_report_flags_spills_smem_and_missing_wgmma():
    row = aot.Row("k", "cfg", registers=255, smem=aot.SMEM_LIMIT + 1, spill_bytes=8, wgmma=False)
    aot._judge(row, expect_wgmma=True)
    assert len(row.problems) == 3


def test_ptxas_log_parsing():
    log = ("ptxas info    : Used 168 registers, used 1 barriers, 49152 bytes smem, 400 bytes cmem[0]\n"
           "ptxas info    : Function properties for k\n"
           "    16 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads\n")
    assert aot._parse_ptxas(log) == (168, 49152, 16)
