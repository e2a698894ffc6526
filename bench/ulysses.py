"""Ulysses context parallelism: the communication model, and the packing kernels' bandwidth.

Communication model (no GPU needed, printed on every run). Per self-attention layer each rank
sends, in all_to_all_single, the (P-1)/P of its local data that belongs to other ranks:
  forward   q, k, v in (seq -> heads) + out back (heads -> seq)    = 4 tensors
  backward  dout in + dq, dk, dv back                              = 4 tensors
of B·(S/P)·H·Dh elements each (bf16). Cross-attention is not distributed (each rank attends its
own query shard to the replicated 512 text tokens: no communication). Time assumes the link runs
at its peak, H100 SXM NVLink 4 through NVSwitch: 450 GB/s per direction per GPU (so the times
are lower bounds; NCCL's achieved all-to-all bandwidth is below peak). Beside it: the
self-attention forward FLOPs of one rank (4·B·S·(S/P)·H·Dh) at the H100 SXM bf16 dense peak
(989.4 TFLOP/s), also a lower bound, to show how much of a layer the exchange can cost.

Measured (ours vs peers on one device): packing q, k, v of one rank into the send buffer and
unpacking the received buffer, as GB/s (bytes read + written) against a device copy of the same
size and against the plain-torch alternative (permute + contiguous per tensor, then cat). On CPU
these are CPU figures with small shapes; the GPU figures need an H100 (unmeasured until run).
"""
from __future__ import annotations

import torch

from bench.common import bandwidth_rows, ours_backends, print_table
from cosmos_kernels import ulysses as uly
from cosmos_kernels.reference import ulysses as ref

NVLINK_GBPS = 450.0            # H100 SXM NVLink 4, per direction per GPU (900 GB/s bidirectional)
PEAK_BF16_TFLOPS = 989.4       # H100 SXM dense bf16 (DESIGN.md MFU section)
MODELS = {"2B": dict(layers=28, heads=16, head_dim=128), "14B": dict(layers=36, heads=40, head_dim=128)}
RESOLUTIONS = {"480p": (24, 30, 52), "720p": (24, 44, 80)}  # latent frames × tokens after 1×2×2 patchify
CP_SIZES = (2, 4, 8)
BYTES = 2  # bf16

# packing measured at these (model, resolution, CP) on a GPU; a small one on CPU
GPU_PACK_CASES = [("2B", "720p", 2), ("2B", "720p", 8), ("14B", "720p", 8)]
QUICK_PACK = dict(B=1, S=256, H=8, Dh=32, P=2)


def comm_model() -> list[dict]:
    """Rows of the model: bytes each rank sends per attention layer and their time at NVLink peak."""
    rows = []
    for model, m in MODELS.items():
        H, Dh, layers = m["heads"], m["head_dim"], m["layers"]
        for res, (T, h, w) in RESOLUTIONS.items():
            S = T * h * w
            for P in CP_SIZES:
                local = S // P * H * Dh * BYTES             # one (1, S/P, H, Dh) tensor
                fwd = 4 * local * (P - 1) / P               # sent to the other P-1 ranks
                comm_ms = fwd / (NVLINK_GBPS * 1e9) * 1e3
                attn_ms = 4 * S * (S / P) * H * Dh / (PEAK_BF16_TFLOPS * 1e12) * 1e3
                rows.append({
                    "op": "ulysses_comm_model", "shape": f"{model} {res} S={S} CP={P}", "dtype": "bfloat16",
                    "impl": f"model@NVLink{NVLINK_GBPS:.0f}GB/s", "ms": comm_ms,
                    "MB_sent_fwd/layer": fwd / 1e6, "MB_sent_fwd+bwd/layer": 2 * fwd / 1e6,
                    "GB_sent_fwd+bwd/step": 2 * fwd * layers / 1e9,
                    "comm_ms_fwd/layer": comm_ms, "comm_ms_fwd+bwd/step": 2 * comm_ms * layers,
                    "attn_fwd_ms@peak/layer": attn_ms, "comm/attn": comm_ms / attn_ms,
                })
    return rows


MODEL_COLUMNS = ["shape", "MB_sent_fwd/layer", "comm_ms_fwd/layer", "attn_fwd_ms@peak/layer", "comm/attn",
                 "GB_sent_fwd+bwd/step", "comm_ms_fwd+bwd/step"]


def _permute_cat_pack(xs, P):
    """The plain-torch way: per tensor (B, S, P, H/P, D) -> (P, B, S, H/P, D) contiguous, then cat
    per destination rank: two passes over the data."""
    parts = [x.reshape(*x.shape[:2], P, x.shape[2] // P, x.shape[3]).permute(2, 0, 1, 3, 4).contiguous() for x in xs]
    return torch.cat([p.reshape(P, -1) for p in parts], dim=1)


def pack_rows(device: torch.device, quick: bool) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if quick:
        cases = [(f"B{QUICK_PACK['B']} S={QUICK_PACK['S']} H={QUICK_PACK['H']} Dh={QUICK_PACK['Dh']}", QUICK_PACK)]
    else:
        cases = []
        for model, res, P in GPU_PACK_CASES:
            T, h, w = RESOLUTIONS[res]
            m = MODELS[model]
            cases.append((f"{model} {res}", dict(B=1, S=T * h * w // P, H=m["heads"], Dh=m["head_dim"], P=P)))
    rows = []
    for label, c in cases:
        B, S, H, Dh, P = c["B"], c["S"], c["H"], c["Dh"], c["P"]
        qkv = [torch.randn(B, S, H, Dh, device=device, dtype=dtype) for _ in range(3)]
        nbytes = 2 * 3 * qkv[0].numel() * qkv[0].element_size()  # read once + write once
        shape = f"{label} CP={P} 3x{(B, S, H, Dh)}"
        expect = ref.pack(qkv, 2, P)
        ours = {b: (lambda b=b: uly._pack_op(qkv, 2, P, b)) for b in ours_backends("ulysses_all_to_all", device)}
        rows += bandwidth_rows("ulysses_pack", shape, dtype, nbytes, ours,
                               {"torch permute+cat": lambda: _permute_cat_pack(qkv, P)}, expect, device, quick)
        # unpack of the received buffer into q, k, v head shards (B, S·P, H/P, Dh)
        shapes = [ref.exchanged_shape(x.shape, 2, 1, P) for x in qkv]
        flat = [n for s in shapes for n in s]
        buf = expect
        expect_u = ref.unpack(buf, shapes, 1, P)
        ours = {b: (lambda b=b: uly._unpack_op(buf, flat, 4, 1, P, b))
                for b in ours_backends("ulysses_all_to_all", device)}
        cols = [x.numel() // P for x in qkv]
        peer = {"torch split+permute": lambda: [c.reshape(P, B, S, H // P, Dh).transpose(0, 1).reshape(s)
                                               for c, s in zip(buf.split(cols, dim=1), shapes)]}
        rows += bandwidth_rows("ulysses_unpack", shape, dtype, nbytes, ours, peer, expect_u, device, quick)
    return rows


def run(device: torch.device, quick: bool, rows: list | None = None) -> list[dict]:
    """This family's rows, appended to `rows` (if given)."""
    rows = [] if rows is None else rows
    model = comm_model()
    print(f"Ulysses all-to-all per rank, bf16, B=1, self-attention only; time at NVLink 4 peak {NVLINK_GBPS:.0f} GB/s "
          f"per direction, attention at bf16 peak {PEAK_BF16_TFLOPS} TFLOP/s (both lower bounds)")
    print_table(model, MODEL_COLUMNS)
    rows += model
    rows += pack_rows(device, quick)
    return rows


if __name__ == "__main__":
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    columns = ["op", "shape", "dtype", "impl", "ms", "GB/s", "vs_peer", "rel_err", "ok"]
    print_table(run(dev, dev.type != "cuda"), columns)
