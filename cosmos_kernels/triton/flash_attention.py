"""Triton kernels of the flash-attention family (see cosmos_kernels/flash_attention.py for the ops).

Tensors are (B, S, H, D) with any strides but a contiguous last dim; one program owns a tile of
rows of one (batch, head). Every kernel keeps O(S) memory: scores live only as on-chip tiles.

- forward: online softmax over key blocks (FA2); exp2 with log2(e) folded into the scale; saves
  the log-sum-exp (natural log, fp32, (B, H, S_q)) for the backward.
- JVP: the same pass carries the tangent. With tS = (tQ Kᵀ + Q tKᵀ)·scale and c = Σ P⊙tS (the
  running, normalized value), tO = P·tV + (P⊙(tS − c))·V. The tangent accumulator is kept
  centered on the running c (re-centered Welford-style as c moves: acc_t −= Δc · acc), so it never
  forms the difference (P⊙tS)·V − c·O of two large terms: large logits (peaked P, large tS) keep
  the bf16 rounding of the dot inputs relative to the tangent itself. Two accumulators
  (acc = P·V, acc_t) plus the row sums l and r, all rescaled by the same online factor.
- backward (FA2): a preprocess kernel δ = rowsum(dO⊙O) − dlse; a dK/dV kernel per key block
  looping over query blocks; a dQ kernel per query block looping over key blocks (no atomics:
  deterministic, the default). The one-pass variant (deterministic=False) computes QKᵀ and the
  softmax once: the dK/dV kernel also adds each query block's dQ share dS·K into an fp32 buffer
  with atomics (run-to-run bits depend on the order of the adds), saving the dQ kernel's recompute.

Forward variants (`Blocks.variant`, picked by cosmos_kernels.tuning; "fa2" is the default until a
GPU measurement says otherwise): "fa2", pointer loads as above; "tma", the same online softmax
with Q/K/V/O moved by TMA tensor descriptors (tl.make_tensor_descriptor: the copy engine does the
address math, out-of-range rows and padded head-dim columns come back as zeros, stores are
clipped); "tma_ws", that loop warp-specialized (a producer warp group issues the loads, consumers
do the MMAs and the softmax). Both need a Triton that offers them (HAS_TMA, HAS_WARP_SPECIALIZE);
without, the launcher takes "fa2".

Key/query loops run the full blocks without masks and the ragged tail with them (MASK constexpr);
head dims are padded to a power of two (BLOCK_D) with the padding masked (EVEN_D constexpr).
Dots take the input dtype (bf16/fp16; fp32 inputs use tf32) and accumulate in fp32.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, tuning
from cosmos_kernels.triton import AotSpec

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# Triton 3.9's interpreter multiplies bf16 dot operands as their raw uint16 bits. Under the
# interpreter only, bf16 operands are widened to fp32 first: exact, so the product and fp32
# accumulation match the bf16 MMA of the compiled kernel. Compiled kernels never see this branch.
_WIDEN_BF16_DOTS = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

# features, not versions: what this Triton offers (3.6 and 3.9 both do; older ones take "fa2")
HAS_TMA = hasattr(tl, "make_tensor_descriptor")
HAS_WARP_SPECIALIZE = "warp_specialize" in inspect.signature(tl.range.__init__).parameters
FWD_VARIANTS = ("fa2",) + (("tma",) if HAS_TMA else ()) + (("tma_ws",) if HAS_TMA and HAS_WARP_SPECIALIZE else ())
# per kernel: the forward and the JVP pass have all three; the backward kernels FA2 and TMA (their
# warp-specialized loops fail to compile in Triton 3.9 at the 128-row tiles: "unsupported load type
# for producer commit")
KERNEL_VARIANTS = {"fwd": FWD_VARIANTS, "jvp": FWD_VARIANTS, "dkdv": FWD_VARIANTS[:2], "dq": FWD_VARIANTS[:2],
                   "bwd_fused": FWD_VARIANTS[:2]}


@dataclass(frozen=True)
class Blocks:
    """Tile shape and launch parameters of one kernel (the same on H100 and in the interpreter),
    and its variant (the forward's "fa2" / "tma" / "tma_ws"; the other kernels have "fa2" only)."""
    m: int
    n: int
    warps: int
    stages: int
    variant: str = "fa2"

    @classmethod
    def checked(cls, m, n, warps, stages, variant="fa2") -> "Blocks":
        """From a tuning-cache entry: tile sizes powers of two >= 16, warps in 1..16, stages >= 1."""
        for name, x in (("m", m), ("n", n)):
            if not isinstance(x, int) or x < 16 or x & (x - 1):
                raise ValueError(f"{name}={x!r} is not a power of two >= 16")
        if warps not in (1, 2, 4, 8, 16) or not isinstance(stages, int) or stages < 1:
            raise ValueError(f"warps={warps!r}, stages={stages!r}: expected warps in 1..16 (power of two), stages >= 1")
        if not isinstance(variant, str):
            raise ValueError(f"variant={variant!r} is not a name")
        return cls(m, n, warps, stages, variant)


# H100 launch configurations, per kernel, per padded head dim (BLOCK_D), for 16-bit inputs and
# for fp32 inputs (tf32 dots; twice the shared memory per tile). Chosen so the sm_90a compile
# report shows wgmma and no spills (python -m cosmos_kernels.aot --only flash_attention); the
# interpreter runs the same tiles. The JVP pass carries two [BLOCK_M, BLOCK_D] fp32 accumulators
# and the tangent tiles, hence its narrower key blocks.
CONFIGS = {
    ("fwd", 2): {32: Blocks(128, 64, 4, 3), 64: Blocks(128, 64, 4, 3), 128: Blocks(128, 128, 8, 2)},
    ("fwd", 4): {32: Blocks(128, 64, 8, 2), 64: Blocks(128, 64, 8, 2), 128: Blocks(128, 64, 8, 2)},
    ("jvp", 2): {32: Blocks(128, 64, 8, 2), 64: Blocks(128, 64, 8, 2), 128: Blocks(128, 32, 8, 2)},
    ("jvp", 4): {32: Blocks(128, 32, 8, 2), 64: Blocks(128, 32, 8, 2), 128: Blocks(128, 16, 8, 2)},
    ("dkdv", 2): {32: Blocks(64, 128, 8, 2), 64: Blocks(64, 128, 8, 2), 128: Blocks(32, 128, 8, 3)},
    # fp32 dK/dV: narrower query steps than 16-bit (with 64 / 32 rows Triton 3.6 spills 48 / 16 bytes)
    ("dkdv", 4): {32: Blocks(64, 128, 8, 2), 64: Blocks(32, 128, 8, 2), 128: Blocks(16, 128, 8, 2)},
    ("dq", 2): {32: Blocks(128, 64, 8, 2), 64: Blocks(128, 64, 8, 2), 128: Blocks(128, 64, 8, 2)},
    ("dq", 4): {32: Blocks(128, 64, 8, 2), 64: Blocks(128, 64, 8, 2), 128: Blocks(128, 32, 8, 2)},
    # one-pass backward (deterministic=False): the dK/dV tiles plus a [BLOCK_M, BLOCK_D] dQ share
    ("bwd_fused", 2): {32: Blocks(64, 128, 8, 2), 64: Blocks(64, 128, 8, 2), 128: Blocks(32, 128, 8, 2)},
    # fp32 at BLOCK_D=128 has no entry: every tile tried spills on sm_90 (16-64 x 32-128, 4 or 8
    # warps, 1-2 stages: 64-2336 bytes), so those take the two-kernel backward (see backward())
    ("bwd_fused", 4): {32: Blocks(64, 128, 8, 2), 64: Blocks(64, 64, 8, 2)},
    # the warp-specialized forward: 4 warps per partition (at 8 the loop is not split), 16-bit only
    # (tf32 dots in a warp-specialized loop fail to compile in Triton 3.6-3.9)
    ("fwd_tma_ws", 2): {32: Blocks(128, 64, 4, 3, "tma_ws"), 64: Blocks(128, 64, 4, 3, "tma_ws"),
                        128: Blocks(128, 64, 4, 2, "tma_ws")},
    # TMA variants of the other kernels (no per-element pointer tiles, so the registers go to the
    # accumulators): the JVP takes 64-key blocks at D=128 (FA2: 32; 253-255 registers, no spill),
    # dK/dV 64-query steps (FA2: 32; one stage at D=128: with two, Triton 3.6 spills 16 bytes); fp32
    # keeps FA2's tiles (twice the shared memory per tile). Spill-free with Triton 3.6 and 3.9 both.
    ("jvp_tma", 2): {32: Blocks(128, 64, 8, 2), 64: Blocks(128, 64, 8, 2), 128: Blocks(128, 64, 8, 2)},
    ("jvp_tma_ws", 2): {32: Blocks(128, 64, 4, 2), 64: Blocks(128, 64, 4, 2), 128: Blocks(128, 32, 4, 2)},
    ("dkdv_tma", 2): {32: Blocks(64, 128, 8, 2), 64: Blocks(64, 128, 8, 2), 128: Blocks(64, 128, 8, 1)},
    ("dkdv_tma", 4): {32: Blocks(64, 128, 8, 2), 64: Blocks(64, 128, 8, 2), 128: Blocks(32, 128, 8, 2)},
    # one pass with TMA: D=128 has no entry (every tile tried spills, 16-6440 bytes): FA2 runs there
    ("bwd_fused_tma", 2): {32: Blocks(64, 128, 8, 2), 64: Blocks(64, 128, 8, 2)},
}
# the TMA forward and dQ, the fp32 TMA JVP and the fp32 TMA one pass run the FA2 tiles
for _kernel, _bytes in (("fwd", 2), ("fwd", 4), ("dq", 2), ("dq", 4), ("jvp", 4), ("bwd_fused", 4)):
    CONFIGS[(f"{_kernel}_tma", _bytes)] = CONFIGS[(_kernel, _bytes)]
del _kernel, _bytes
PRE = Blocks(64, 0, 4, 1)  # rows per program of the δ preprocess


def block_d(head_dim: int) -> int:
    return max(32, triton.next_power_of_2(head_dim))


def _table(kernel: str, dtype: torch.dtype, variant: str) -> dict:
    name = kernel if variant == "fa2" else f"{kernel}_{variant}"
    return CONFIGS.get((name, 4 if dtype == torch.float32 else 2), {})


def has_config(kernel: str, head_dim: int, dtype: torch.dtype, variant: str) -> bool:
    """Whether the table holds a (spill-free) tile of `variant` for this head dim."""
    return block_d(head_dim) in _table(kernel, dtype, variant)


def config(kernel: str, head_dim: int, dtype: torch.dtype, variant: str = "fa2") -> Blocks:
    """The built-in launch table's configuration (what runs without a tuned entry); for a variant,
    its own tile where the table has one, else the FA2 tile."""
    cfg = _table(kernel, dtype, variant).get(block_d(head_dim)) or _table(kernel, dtype, "fa2")[block_d(head_dim)]
    return Blocks(cfg.m, cfg.n, cfg.warps, cfg.stages, variant)


KERNELS = ("fwd", "jvp", "dkdv", "dq", "bwd_fused")


def variants(kernel: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The variants this Triton offers for `kernel` and `dtype` (tma_ws: 16-bit only)."""
    return tuple(v for v in KERNEL_VARIANTS[kernel] if not (v == "tma_ws" and dtype == torch.float32))


def _uses_tma(op: str, kernel: str, cfg: Blocks, dtype: torch.dtype) -> bool:
    """Whether `cfg` asks for one of the TMA variants; a variant this Triton does not offer for
    `kernel` and `dtype` is a ValueError."""
    offered = variants(kernel, dtype)
    if cfg.variant not in offered:
        raise ValueError(f"{op}: {kernel} variant {cfg.variant!r} is not offered for {dtype} by this Triton "
                         f"({triton.__version__}); available: {', '.join(offered)}")
    return cfg.variant != "fa2"


def one_pass_backward(head_dim: int, dtype: torch.dtype) -> bool:
    """Whether deterministic=False runs the one-pass backward here (see CONFIGS["bwd_fused"])."""
    return block_d(head_dim) in CONFIGS[("bwd_fused", 4 if dtype == torch.float32 else 2)]


def loop_length(kernel: str, S_q: int, S_k: int) -> int:
    """The sequence a kernel's programs loop over: its tuning-cache bucket."""
    return S_q if kernel in ("dkdv", "bwd_fused") else S_k


def choose(kernel: str, head_dim: int, dtype: torch.dtype, S_q: int, S_k: int, device) -> Blocks:
    """The tuned configuration for this problem (cosmos_kernels.tuning), else the built-in table's."""
    tuned = tuning.lookup(kernel, dtype, head_dim, loop_length(kernel, S_q, S_k), device,
                          make=Blocks.checked, variants=variants(kernel, dtype))
    return tuned or config(kernel, head_dim, dtype)


# ---------------------------------------------------------------------------------------------
# tile helpers
# ---------------------------------------------------------------------------------------------
@triton.jit
def _dot(a, b, acc=None):
    if _WIDEN_BF16_DOTS:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _load_rows(ptrs, rows_ok, d_ok, MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a [R, BLOCK_D] tile; rows masked only when MASK, columns only when D is padded."""
    if MASK:
        if EVEN_D:
            x = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return x


@triton.jit
def _tile(ptr, start, rows, stride, offs_d):
    """Pointers to rows start + rows of a [rows, D] tile. The start row enters in int64 (sequences
    times strides can pass 2^31); offsets inside the tile stay int32."""
    return ptr + start.to(tl.int64) * stride + rows[:, None] * stride + offs_d[None, :]


@triton.jit
def _store_rows(ptrs, val, rows_ok, d_ok, EVEN_D: tl.constexpr):
    if EVEN_D:
        tl.store(ptrs, val, mask=rows_ok[:, None])
    else:
        tl.store(ptrs, val, mask=rows_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _online_softmax(acc, l_i, m_i, s, v):
    """One key block of the online softmax (FA2): scores s in log2 units, rescale, accumulate P·V."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _fwd_block(acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n, offs_n, S_k, offs_d, qk_scale,
               HEAD_DIM: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr):
    n_ok = start_n + offs_n < S_k
    d_ok = offs_d < HEAD_DIM
    k = _load_rows(k_ptrs, n_ok, d_ok, MASK, EVEN_D)
    v = _load_rows(v_ptrs, n_ok, d_ok, MASK, EVEN_D)
    s = _dot(q, tl.trans(k)) * qk_scale  # log2 units
    if MASK:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    return _online_softmax(acc, l_i, m_i, s, v)


@triton.jit
def _attn_fwd(Q, K, V, O, LSE,
              sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
              n_heads, S_q, S_k, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_m = tl.program_id(0) * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < S_q
    d_ok = offs_d < HEAD_DIM
    q = _load_rows(_tile(Q + b * sqb + h * sqh, start_m, rows, sqs, offs_d), m_ok, d_ok, True, EVEN_D)
    k_ptrs = K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :]
    v_ptrs = V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = (S_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n,
                                   offs_n, S_k, offs_d, qk_scale, HEAD_DIM, False, EVEN_D)
        k_ptrs += BLOCK_N * sks
        v_ptrs += BLOCK_N * svs
    if n_full < S_k:
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_ptrs, v_ptrs, n_full,
                                   offs_n, S_k, offs_d, qk_scale, HEAD_DIM, True, EVEN_D)

    out = acc / l_i[:, None]
    _store_rows(_tile(O + b * sob + h * soh, start_m, rows, sos, offs_d), out.to(O.dtype.element_ty),
                m_ok, d_ok, EVEN_D)
    tl.store(LSE + bh.to(tl.int64) * S_q + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=m_ok)


@triton.jit
def _fwd_tma_block(acc, l_i, m_i, q, k_desc, v_desc, start_n, offs_n, S_k, qk_scale, MASK: tl.constexpr):
    """_fwd_block with descriptor loads: out-of-range key rows arrive as zeros, masked when MASK."""
    k = k_desc.load([start_n, 0])
    v = v_desc.load([start_n, 0])
    s = _dot(q, tl.trans(k)) * qk_scale  # log2 units
    if MASK:
        s = tl.where((start_n + offs_n < S_k)[None, :], s, float("-inf"))
    return _online_softmax(acc, l_i, m_i, s, v)


@triton.jit
def _attn_fwd_tma(Q, K, V, O, LSE,
                  sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
                  n_heads, S_q, S_k, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  WARP_SPECIALIZE: tl.constexpr):
    """_attn_fwd with TMA descriptor loads/stores (one [S, HEAD_DIM] descriptor per (batch, head);
    the launcher checks TMA's 16-byte rules). Zero-filled out-of-range key rows are masked to −inf
    in the scores of the last block only (every block when warp-specialized: one loop body)."""
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_m = tl.program_id(0) * BLOCK_M
    q_desc = tl.make_tensor_descriptor(Q + b * sqb + h * sqh, shape=[S_q, HEAD_DIM], strides=[sqs, 1],
                                       block_shape=[BLOCK_M, BLOCK_D])
    k_desc = tl.make_tensor_descriptor(K + b * skb + h * skh, shape=[S_k, HEAD_DIM], strides=[sks, 1],
                                       block_shape=[BLOCK_N, BLOCK_D])
    v_desc = tl.make_tensor_descriptor(V + b * svb + h * svh, shape=[S_k, HEAD_DIM], strides=[svs, 1],
                                       block_shape=[BLOCK_N, BLOCK_D])
    o_desc = tl.make_tensor_descriptor(O + b * sob + h * soh, shape=[S_q, HEAD_DIM], strides=[sos, 1],
                                       block_shape=[BLOCK_M, BLOCK_D])
    q = q_desc.load([start_m, 0])
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = S_k if WARP_SPECIALIZE else (S_k // BLOCK_N) * BLOCK_N
    for start_n in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        acc, l_i, m_i = _fwd_tma_block(acc, l_i, m_i, q, k_desc, v_desc, start_n, offs_n, S_k, qk_scale,
                                       WARP_SPECIALIZE)
    if n_full < S_k:  # the ragged tail (not warp-specialized)
        acc, l_i, m_i = _fwd_tma_block(acc, l_i, m_i, q, k_desc, v_desc, n_full, offs_n, S_k, qk_scale, True)
    o_desc.store([start_m, 0], (acc / l_i[:, None]).to(O.dtype.element_ty))
    offs_m = start_m + tl.arange(0, BLOCK_M)
    tl.store(LSE + bh.to(tl.int64) * S_q + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=offs_m < S_q)


# ---------------------------------------------------------------------------------------------
# forward + JVP in one pass
# ---------------------------------------------------------------------------------------------
@triton.jit
def _jvp_scores(q, tq, k, tk, n_ok, qk_scale, scale, MASK: tl.constexpr):
    """Scores (log2 units, masked when MASK) and their tangent (natural units) of one key block."""
    kt = tl.trans(k)
    s = _dot(q, kt) * qk_scale
    ts = _dot(tq, kt, _dot(q, tl.trans(tk))) * scale
    if MASK:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    return s, ts


@triton.jit
def _jvp_softmax(acc, acc_t, l_i, r_i, m_i, c_i, s, ts):
    """The online softmax and tangent statistics of one key block: P, the rescale factor, and the
    tangent sum re-centered on the new c (it held Σ P(tS − c_i)V + P tV)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    r_i = r_i * alpha + tl.sum(p * ts, 1)
    c_new = r_i / l_i
    acc_t = acc_t * alpha[:, None] - ((c_new - c_i) * alpha)[:, None] * acc
    return acc_t, p, alpha, l_i, r_i, m_new, c_new


@triton.jit
def _jvp_accumulate(acc, acc_t, p, ts, alpha, c_new, v, tv):
    pv = p.to(v.dtype)
    acc = acc * alpha[:, None] + _dot(pv, v)
    acc_t = _dot(pv, tv, acc_t)
    acc_t = _dot((p * (ts - c_new[:, None])).to(v.dtype), v, acc_t)
    return acc, acc_t


@triton.jit
def _jvp_start(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The JVP pass's running state: both accumulators, l, r (Σ P tS), the row max m, c = r / l."""
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc_t = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    r_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    c_i = tl.zeros([BLOCK_M], tl.float32)
    return acc, acc_t, l_i, r_i, m_i, c_i


@triton.jit
def _jvp_block(acc, acc_t, l_i, r_i, m_i, c_i, q, tq, k_ptrs, tk_ptrs, v_ptrs, tv_ptrs, start_n, offs_n, S_k,
               offs_d, qk_scale, scale, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr):
    n_ok = start_n + offs_n < S_k
    d_ok = offs_d < HEAD_DIM
    k = _load_rows(k_ptrs, n_ok, d_ok, MASK, EVEN_D)
    tk = _load_rows(tk_ptrs, n_ok, d_ok, MASK, EVEN_D)
    s, ts = _jvp_scores(q, tq, k, tk, n_ok, qk_scale, scale, MASK)
    acc_t, p, alpha, l_i, r_i, m_new, c_new = _jvp_softmax(acc, acc_t, l_i, r_i, m_i, c_i, s, ts)
    v = _load_rows(v_ptrs, n_ok, d_ok, MASK, EVEN_D)  # loaded late: fewer tiles live at once
    tv = _load_rows(tv_ptrs, n_ok, d_ok, MASK, EVEN_D)
    acc, acc_t = _jvp_accumulate(acc, acc_t, p, ts, alpha, c_new, v, tv)
    return acc, acc_t, l_i, r_i, m_new, c_new


@triton.jit
def _jvp_tma_block(acc, acc_t, l_i, r_i, m_i, c_i, q, tq, k_desc, tk_desc, v_desc, tv_desc, start_n, offs_n, S_k,
                   qk_scale, scale, MASK: tl.constexpr):
    """_jvp_block with descriptor loads (out-of-range key rows arrive as zeros, masked when MASK)."""
    n_ok = start_n + offs_n < S_k
    s, ts = _jvp_scores(q, tq, k_desc.load([start_n, 0]), tk_desc.load([start_n, 0]), n_ok, qk_scale, scale, MASK)
    acc_t, p, alpha, l_i, r_i, m_new, c_new = _jvp_softmax(acc, acc_t, l_i, r_i, m_i, c_i, s, ts)
    acc, acc_t = _jvp_accumulate(acc, acc_t, p, ts, alpha, c_new, v_desc.load([start_n, 0]),
                                 tv_desc.load([start_n, 0]))
    return acc, acc_t, l_i, r_i, m_new, c_new


@triton.jit
def _attn_jvp(Q, K, V, TQ, TK, TV, O, TO, LSE, TLSE,
              sqb, sqs, sqh, skb, sks, skh, svb, svs, svh,
              stqb, stqs, stqh, stkb, stks, stkh, stvb, stvs, stvh, sob, sos, soh,
              n_heads, S_q, S_k, qk_scale, scale,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_m = tl.program_id(0) * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < S_q
    d_ok = offs_d < HEAD_DIM
    q = _load_rows(_tile(Q + b * sqb + h * sqh, start_m, rows, sqs, offs_d), m_ok, d_ok, True, EVEN_D)
    tq = _load_rows(_tile(TQ + b * stqb + h * stqh, start_m, rows, stqs, offs_d), m_ok, d_ok, True, EVEN_D)
    k_ptrs = K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :]
    v_ptrs = V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :]
    tk_ptrs = TK + b * stkb + h * stkh + offs_n[:, None] * stks + offs_d[None, :]
    tv_ptrs = TV + b * stvb + h * stvh + offs_n[:, None] * stvs + offs_d[None, :]

    acc, acc_t, l_i, r_i, m_i, c_i = _jvp_start(BLOCK_M, BLOCK_D)
    n_full = (S_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, acc_t, l_i, r_i, m_i, c_i = _jvp_block(
            acc, acc_t, l_i, r_i, m_i, c_i, q, tq, k_ptrs, tk_ptrs, v_ptrs, tv_ptrs, start_n, offs_n, S_k,
            offs_d, qk_scale, scale, HEAD_DIM, False, EVEN_D)
        k_ptrs += BLOCK_N * sks
        tk_ptrs += BLOCK_N * stks
        v_ptrs += BLOCK_N * svs
        tv_ptrs += BLOCK_N * stvs
    if n_full < S_k:
        acc, acc_t, l_i, r_i, m_i, c_i = _jvp_block(
            acc, acc_t, l_i, r_i, m_i, c_i, q, tq, k_ptrs, tk_ptrs, v_ptrs, tv_ptrs, n_full, offs_n, S_k,
            offs_d, qk_scale, scale, HEAD_DIM, True, EVEN_D)

    inv_l = 1.0 / l_i
    row = _tile(b * sob + h * soh, start_m, rows, sos, offs_d)
    _store_rows(O + row, (acc * inv_l[:, None]).to(O.dtype.element_ty), m_ok, d_ok, EVEN_D)
    _store_rows(TO + row, (acc_t * inv_l[:, None]).to(TO.dtype.element_ty), m_ok, d_ok, EVEN_D)
    lrow = bh.to(tl.int64) * S_q + offs_m
    tl.store(LSE + lrow, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=m_ok)
    tl.store(TLSE + lrow, c_i, mask=m_ok)


@triton.jit
def _desc(ptr, rows, row_stride, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """A TMA descriptor of one (batch, head)'s [rows, HEAD_DIM] matrix in [BLOCK_R, BLOCK_D] tiles."""
    return tl.make_tensor_descriptor(ptr, shape=[rows, HEAD_DIM], strides=[row_stride, 1],
                                     block_shape=[BLOCK_R, BLOCK_D])


@triton.jit
def _attn_jvp_tma(Q, K, V, TQ, TK, TV, O, TO, LSE, TLSE,
                  sqb, sqs, sqh, skb, sks, skh, svb, svs, svh,
                  stqb, stqs, stqh, stkb, stks, stkh, stvb, stvs, stvh, sob, sos, soh,
                  n_heads, S_q, S_k, qk_scale, scale,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  WARP_SPECIALIZE: tl.constexpr):
    """_attn_jvp with TMA descriptor loads and stores (no per-element pointer tiles: the registers
    they took go to the two accumulators, so wider key blocks fit)."""
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_m = tl.program_id(0) * BLOCK_M
    q = _desc(Q + b * sqb + h * sqh, S_q, sqs, HEAD_DIM, BLOCK_M, BLOCK_D).load([start_m, 0])
    tq = _desc(TQ + b * stqb + h * stqh, S_q, stqs, HEAD_DIM, BLOCK_M, BLOCK_D).load([start_m, 0])
    k_desc = _desc(K + b * skb + h * skh, S_k, sks, HEAD_DIM, BLOCK_N, BLOCK_D)
    tk_desc = _desc(TK + b * stkb + h * stkh, S_k, stks, HEAD_DIM, BLOCK_N, BLOCK_D)
    v_desc = _desc(V + b * svb + h * svh, S_k, svs, HEAD_DIM, BLOCK_N, BLOCK_D)
    tv_desc = _desc(TV + b * stvb + h * stvh, S_k, stvs, HEAD_DIM, BLOCK_N, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    acc, acc_t, l_i, r_i, m_i, c_i = _jvp_start(BLOCK_M, BLOCK_D)
    n_full = S_k if WARP_SPECIALIZE else (S_k // BLOCK_N) * BLOCK_N
    for start_n in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        acc, acc_t, l_i, r_i, m_i, c_i = _jvp_tma_block(acc, acc_t, l_i, r_i, m_i, c_i, q, tq, k_desc, tk_desc,
                                                        v_desc, tv_desc, start_n, offs_n, S_k, qk_scale, scale,
                                                        WARP_SPECIALIZE)
    if n_full < S_k:  # the ragged tail (not warp-specialized)
        acc, acc_t, l_i, r_i, m_i, c_i = _jvp_tma_block(acc, acc_t, l_i, r_i, m_i, c_i, q, tq, k_desc, tk_desc,
                                                        v_desc, tv_desc, n_full, offs_n, S_k, qk_scale, scale, True)
    inv_l = 1.0 / l_i
    _desc(O + b * sob + h * soh, S_q, sos, HEAD_DIM, BLOCK_M, BLOCK_D).store(
        [start_m, 0], (acc * inv_l[:, None]).to(O.dtype.element_ty))
    _desc(TO + b * sob + h * soh, S_q, sos, HEAD_DIM, BLOCK_M, BLOCK_D).store(
        [start_m, 0], (acc_t * inv_l[:, None]).to(TO.dtype.element_ty))
    offs_m = start_m + tl.arange(0, BLOCK_M)
    lrow = bh.to(tl.int64) * S_q + offs_m
    tl.store(LSE + lrow, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=offs_m < S_q)
    tl.store(TLSE + lrow, c_i, mask=offs_m < S_q)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_preprocess(O, DO, DLSE, DELTA, sob, sos, soh, sdob, sdos, sdoh, n_heads, S_q,
                    HAS_DLSE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_m = tl.program_id(0) * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < S_q
    d_ok = offs_d < HEAD_DIM
    o = _load_rows(_tile(O + b * sob + h * soh, start_m, rows, sos, offs_d), m_ok, d_ok, True, EVEN_D)
    do = _load_rows(_tile(DO + b * sdob + h * sdoh, start_m, rows, sdos, offs_d), m_ok, d_ok, True, EVEN_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    lrow = bh.to(tl.int64) * S_q + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLSE + lrow, mask=m_ok, other=0.0)
    tl.store(DELTA + lrow, delta, mask=m_ok)


@triton.jit
def _row_stats(lse_ptrs, delta_ptrs, m_ok, MASK: tl.constexpr):
    """log2-unit lse and δ of a block of query rows."""
    if MASK:
        lse2 = tl.load(lse_ptrs, mask=m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptrs, mask=m_ok, other=0.0)
    else:
        lse2 = tl.load(lse_ptrs) * 1.4426950408889634
        delta = tl.load(delta_ptrs)
    return lse2, delta


@triton.jit
def _dkdv_block(dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptrs, delta_ptrs, start_m, offs_m, S_q, offs_d,
                qk_scale, scale, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr,
                ONE_PASS: tl.constexpr):
    m_ok = start_m + offs_m < S_q
    d_ok = offs_d < HEAD_DIM
    q = _load_rows(q_ptrs, m_ok, d_ok, MASK, EVEN_D)
    do = _load_rows(do_ptrs, m_ok, d_ok, MASK, EVEN_D)
    lse2, delta = _row_stats(lse_ptrs, delta_ptrs, m_ok, MASK)
    return _dkdv_update(dk, dv, k, v, q, do, lse2, delta, dq_ptrs, m_ok, d_ok, qk_scale, scale, MASK, EVEN_D,
                        ONE_PASS)


@triton.jit
def _dkdv_update(dk, dv, k, v, q, do, lse2, delta, dq_ptrs, m_ok, d_ok, qk_scale, scale, MASK: tl.constexpr,
                 EVEN_D: tl.constexpr, ONE_PASS: tl.constexpr):
    """One query block's contribution to dK, dV (and with ONE_PASS its dQ shares, atomically)."""
    pt = tl.math.exp2(_dot(k, tl.trans(q)) * qk_scale - lse2[None, :])  # Pᵀ: [BLOCK_N, BLOCK_M]
    if MASK:
        pt = tl.where(m_ok[None, :], pt, 0.0)
    dv = _dot(pt.to(do.dtype), do, dv)
    dst = (pt * (_dot(v, tl.trans(do)) - delta[None, :])).to(q.dtype)  # dSᵀ
    dk = _dot(dst, q, dk)
    if ONE_PASS:  # this key block's share of the dQ rows start_m...
        dq = _dot(tl.trans(dst), k) * scale
        if EVEN_D:
            tl.atomic_add(dq_ptrs, dq, mask=m_ok[:, None], sem="relaxed")
        else:
            tl.atomic_add(dq_ptrs, dq, mask=m_ok[:, None] & d_ok[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
                   sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdob, sdos, sdoh,
                   sdkb, sdks, sdkh, sdvb, sdvs, sdvh, saqb, saqs, saqh,
                   n_heads, S_q, S_k, qk_scale, scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   ONE_PASS: tl.constexpr):
    """dK, dV of one key block; with ONE_PASS also its dQ shares (fp32 atomics into DQ_ACC,
    zero-initialized; otherwise DQ_ACC is unused and the dQ kernel runs after)."""
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_n = tl.program_id(0) * BLOCK_N
    rows = tl.arange(0, BLOCK_N)
    offs_n = start_n + rows
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < S_k
    d_ok = offs_d < HEAD_DIM
    k = _load_rows(_tile(K + b * skb + h * skh, start_n, rows, sks, offs_d), n_ok, d_ok, True, EVEN_D)
    v = _load_rows(_tile(V + b * svb + h * svh, start_n, rows, svs, offs_d), n_ok, d_ok, True, EVEN_D)
    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :]
    do_ptrs = DO + b * sdob + h * sdoh + offs_m[:, None] * sdos + offs_d[None, :]
    dq_ptrs = DQ_ACC + b * saqb + h * saqh + offs_m[:, None] * saqs + offs_d[None, :]
    lse_ptrs = LSE + bh.to(tl.int64) * S_q + offs_m
    delta_ptrs = DELTA + bh.to(tl.int64) * S_q + offs_m

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    m_full = (S_q // BLOCK_M) * BLOCK_M
    for start_m in range(0, m_full, BLOCK_M):
        dk, dv = _dkdv_block(dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptrs, delta_ptrs, start_m, offs_m,
                             S_q, offs_d, qk_scale, scale, HEAD_DIM, False, EVEN_D, ONE_PASS)
        q_ptrs += BLOCK_M * sqs
        do_ptrs += BLOCK_M * sdos
        dq_ptrs += BLOCK_M * saqs
        lse_ptrs += BLOCK_M
        delta_ptrs += BLOCK_M
    if m_full < S_q:
        dk, dv = _dkdv_block(dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptrs, delta_ptrs, m_full, offs_m,
                             S_q, offs_d, qk_scale, scale, HEAD_DIM, True, EVEN_D, ONE_PASS)

    _store_rows(_tile(DK + b * sdkb + h * sdkh, start_n, rows, sdks, offs_d),
                (dk * scale).to(DK.dtype.element_ty), n_ok, d_ok, EVEN_D)
    _store_rows(_tile(DV + b * sdvb + h * sdvh, start_n, rows, sdvs, offs_d),
                dv.to(DV.dtype.element_ty), n_ok, d_ok, EVEN_D)


@triton.jit
def _dq_block(dq, q, do, lse2, delta, k_ptrs, v_ptrs, start_n, offs_n, S_k, offs_d, qk_scale,
              HEAD_DIM: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr):
    n_ok = start_n + offs_n < S_k
    d_ok = offs_d < HEAD_DIM
    k = _load_rows(k_ptrs, n_ok, d_ok, MASK, EVEN_D)
    v = _load_rows(v_ptrs, n_ok, d_ok, MASK, EVEN_D)
    return _dq_update(dq, q, do, lse2, delta, k, v, n_ok, qk_scale, MASK)


@triton.jit
def _dq_update(dq, q, do, lse2, delta, k, v, n_ok, qk_scale, MASK: tl.constexpr):
    """One key block's contribution to dQ (unscaled)."""
    p = tl.math.exp2(_dot(q, tl.trans(k)) * qk_scale - lse2[:, None])
    if MASK:
        p = tl.where(n_ok[None, :], p, 0.0)
    dp = _dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return _dot(ds.to(k.dtype), k, dq)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdob, sdos, sdoh, sdqb, sdqs, sdqh,
                 n_heads, S_q, S_k, qk_scale, scale,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_m = tl.program_id(0) * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < S_q
    d_ok = offs_d < HEAD_DIM
    q = _load_rows(_tile(Q + b * sqb + h * sqh, start_m, rows, sqs, offs_d), m_ok, d_ok, True, EVEN_D)
    do = _load_rows(_tile(DO + b * sdob + h * sdoh, start_m, rows, sdos, offs_d), m_ok, d_ok, True, EVEN_D)
    lrow = bh.to(tl.int64) * S_q + offs_m
    lse2 = tl.load(LSE + lrow, mask=m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + lrow, mask=m_ok, other=0.0)
    k_ptrs = K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :]
    v_ptrs = V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :]

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = (S_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq = _dq_block(dq, q, do, lse2, delta, k_ptrs, v_ptrs, start_n, offs_n, S_k, offs_d, qk_scale,
                       HEAD_DIM, False, EVEN_D)
        k_ptrs += BLOCK_N * sks
        v_ptrs += BLOCK_N * svs
    if n_full < S_k:
        dq = _dq_block(dq, q, do, lse2, delta, k_ptrs, v_ptrs, n_full, offs_n, S_k, offs_d, qk_scale,
                       HEAD_DIM, True, EVEN_D)
    _store_rows(_tile(DQ + b * sdqb + h * sdqh, start_m, rows, sdqs, offs_d),
                (dq * scale).to(DQ.dtype.element_ty), m_ok, d_ok, EVEN_D)


@triton.jit
def _attn_bwd_dkdv_tma(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
                       sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdob, sdos, sdoh,
                       sdkb, sdks, sdkh, sdvb, sdvs, sdvh, saqb, saqs, saqh,
                       n_heads, S_q, S_k, qk_scale, scale,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       ONE_PASS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
    """_attn_bwd_dkdv with TMA descriptors for the K, V, Q, dO tiles and the dK, dV stores (the row
    statistics and the one-pass dQ atomics stay pointer-based)."""
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_n = tl.program_id(0) * BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    k = _desc(K + b * skb + h * skh, S_k, sks, HEAD_DIM, BLOCK_N, BLOCK_D).load([start_n, 0])
    v = _desc(V + b * svb + h * svh, S_k, svs, HEAD_DIM, BLOCK_N, BLOCK_D).load([start_n, 0])
    q_desc = _desc(Q + b * sqb + h * sqh, S_q, sqs, HEAD_DIM, BLOCK_M, BLOCK_D)
    do_desc = _desc(DO + b * sdob + h * sdoh, S_q, sdos, HEAD_DIM, BLOCK_M, BLOCK_D)
    dq_base = DQ_ACC + b * saqb + h * saqh + offs_m[:, None] * saqs + offs_d[None, :]
    row_base = bh.to(tl.int64) * S_q + offs_m

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    m_full = S_q if WARP_SPECIALIZE else (S_q // BLOCK_M) * BLOCK_M
    for start_m in tl.range(0, m_full, BLOCK_M, warp_specialize=WARP_SPECIALIZE):
        dk, dv = _dkdv_tma_block(dk, dv, k, v, q_desc, do_desc, dq_base, LSE, DELTA, row_base, start_m, offs_m, S_q,
                                 d_ok, saqs, qk_scale, scale, WARP_SPECIALIZE, EVEN_D, ONE_PASS)
    if m_full < S_q:  # the ragged tail (not warp-specialized)
        dk, dv = _dkdv_tma_block(dk, dv, k, v, q_desc, do_desc, dq_base, LSE, DELTA, row_base, m_full, offs_m, S_q,
                                 d_ok, saqs, qk_scale, scale, True, EVEN_D, ONE_PASS)
    _desc(DK + b * sdkb + h * sdkh, S_k, sdks, HEAD_DIM, BLOCK_N, BLOCK_D).store(
        [start_n, 0], (dk * scale).to(DK.dtype.element_ty))
    _desc(DV + b * sdvb + h * sdvh, S_k, sdvs, HEAD_DIM, BLOCK_N, BLOCK_D).store([start_n, 0], dv.to(DV.dtype.element_ty))


@triton.jit
def _dkdv_tma_block(dk, dv, k, v, q_desc, do_desc, dq_base, LSE, DELTA, row_base, start_m, offs_m, S_q, d_ok, saqs,
                    qk_scale, scale, MASK: tl.constexpr, EVEN_D: tl.constexpr, ONE_PASS: tl.constexpr):
    m_ok = start_m + offs_m < S_q
    lse2, delta = _row_stats(LSE + row_base + start_m, DELTA + row_base + start_m, m_ok, MASK)
    return _dkdv_update(dk, dv, k, v, q_desc.load([start_m, 0]), do_desc.load([start_m, 0]), lse2, delta,
                        dq_base + saqs.to(tl.int64) * start_m, m_ok, d_ok, qk_scale, scale, MASK, EVEN_D, ONE_PASS)


@triton.jit
def _attn_bwd_dq_tma(Q, K, V, DO, LSE, DELTA, DQ,
                     sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdob, sdos, sdoh, sdqb, sdqs, sdqh,
                     n_heads, S_q, S_k, qk_scale, scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     WARP_SPECIALIZE: tl.constexpr):
    """_attn_bwd_dq with TMA descriptors for the Q, dO, K, V tiles and the dQ store."""
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    m_ok = offs_m < S_q
    q = _desc(Q + b * sqb + h * sqh, S_q, sqs, HEAD_DIM, BLOCK_M, BLOCK_D).load([start_m, 0])
    do = _desc(DO + b * sdob + h * sdoh, S_q, sdos, HEAD_DIM, BLOCK_M, BLOCK_D).load([start_m, 0])
    lrow = bh.to(tl.int64) * S_q + offs_m
    lse2, delta = _row_stats(LSE + lrow, DELTA + lrow, m_ok, True)
    k_desc = _desc(K + b * skb + h * skh, S_k, sks, HEAD_DIM, BLOCK_N, BLOCK_D)
    v_desc = _desc(V + b * svb + h * svh, S_k, svs, HEAD_DIM, BLOCK_N, BLOCK_D)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = S_k if WARP_SPECIALIZE else (S_k // BLOCK_N) * BLOCK_N
    for start_n in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        dq = _dq_update(dq, q, do, lse2, delta, k_desc.load([start_n, 0]), v_desc.load([start_n, 0]),
                        start_n + offs_n < S_k, qk_scale, WARP_SPECIALIZE)
    if n_full < S_k:  # the ragged tail (not warp-specialized)
        dq = _dq_update(dq, q, do, lse2, delta, k_desc.load([n_full, 0]), v_desc.load([n_full, 0]),
                        n_full + offs_n < S_k, qk_scale, True)
    _desc(DQ + b * sdqb + h * sdqh, S_q, sdqs, HEAD_DIM, BLOCK_M, BLOCK_D).store([start_m, 0],
                                                                                (dq * scale).to(DQ.dtype.element_ty))


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _meta(head_dim: int, cfg: Blocks) -> dict:
    return dict(HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), BLOCK_M=cfg.m, BLOCK_N=cfg.n,
                num_warps=cfg.warps, num_stages=cfg.stages)


def _tma_ready(*tensors: torch.Tensor) -> bool:
    """TMA's rules for a [S, D] view of each (B, S, H, D) tensor: unit stride along D, a 16-byte
    aligned base (every (batch, head) offset keeps it, D % 16 == 0) and nonzero 16-byte multiples
    as the other strides (an expanded gradient, stride 0, takes the FA2 path)."""
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((st * size) % 16 or (st == 0 and n > 1)
                                                         for st, n in zip(t.stride()[:-1], t.shape[:-1])):
            return False
    if tensors[0].is_cuda:  # device-side descriptors take a small global scratch per launch
        from triton.runtime import _allocation
        if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    return True


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, cfg: Blocks | None = None):
    """cfg: a launch configuration to use (the tuner, the benchmark's variants); default: choose()."""
    B, S_q, H, D = q.shape
    S_k = k.shape[1]
    out = _alloc.empty_like(q)
    lse = _alloc.empty(B, H, S_q, dtype=torch.float32, device=q.device)
    cfg = cfg or choose("fwd", D, q.dtype, S_q, S_k, q.device)
    grid = (triton.cdiv(S_q, cfg.m), B * H)
    args = (q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out), H, S_q, S_k, scale * LOG2E)
    if _uses_tma("flash_attention", "fwd", cfg, q.dtype) and _tma_ready(q, k, v, out):
        _attn_fwd_tma[grid](*args, WARP_SPECIALIZE=cfg.variant == "tma_ws", **_meta(D, cfg))
        return out, lse
    _attn_fwd[grid](*args, **_meta(D, cfg))
    return out, lse


def forward_jvp(q, k, v, q_t, k_t, v_t, scale: float, cfg: Blocks | None = None):
    B, S_q, H, D = q.shape
    S_k = k.shape[1]
    out = _alloc.empty_like(q)
    out_t = _alloc.empty_like(q)
    lse = _alloc.empty(B, H, S_q, dtype=torch.float32, device=q.device)
    lse_t = _alloc.empty(B, H, S_q, dtype=torch.float32, device=q.device)
    cfg = cfg or choose("jvp", D, q.dtype, S_q, S_k, q.device)
    grid = (triton.cdiv(S_q, cfg.m), B * H)
    args = (q, k, v, q_t, k_t, v_t, out, out_t, lse, lse_t, *_strides(q), *_strides(k), *_strides(v),
            *_strides(q_t), *_strides(k_t), *_strides(v_t), *_strides(out), H, S_q, S_k, scale * LOG2E, scale)
    if _uses_tma("flash_attention_jvp", "jvp", cfg, q.dtype) and _tma_ready(q, k, v, q_t, k_t, v_t, out, out_t):
        _attn_jvp_tma[grid](*args, WARP_SPECIALIZE=cfg.variant == "tma_ws", **_meta(D, cfg))
        return out, out_t, lse, lse_t
    _attn_jvp[grid](*args, **_meta(D, cfg))
    return out, out_t, lse, lse_t


def backward(grad, q, k, v, out, lse, scale: float, grad_lse=None, deterministic: bool = True,
             cfgs: dict | None = None):
    """cfgs: launch configurations by kernel name ("dkdv", "dq", "bwd_fused"); default: choose()."""
    B, S_q, H, D = q.shape
    S_k = k.shape[1]
    cfgs = cfgs or {}

    def pick(kernel):
        return cfgs.get(kernel) or choose(kernel, D, q.dtype, S_q, S_k, q.device)

    delta = _alloc.empty(B, H, S_q, dtype=torch.float32, device=q.device)
    _bwd_preprocess[(triton.cdiv(S_q, PRE.m), B * H)](
        out, grad, grad_lse if grad_lse is not None else delta, delta, *_strides(out), *_strides(grad), H, S_q,
        HAS_DLSE=grad_lse is not None, HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=PRE.m, num_warps=PRE.warps)
    dk, dv = _alloc.empty_like(k), _alloc.empty_like(v)
    one_pass = not deterministic and one_pass_backward(D, q.dtype)
    # the one pass adds dQ into a zeroed fp32 buffer; otherwise DQ_ACC is unused (dk stands in)
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if one_pass else dk
    kernel = "bwd_fused" if one_pass else "dkdv"
    cfg = pick(kernel)
    args = (q, k, v, grad, lse, delta, dk, dv, dq_acc, *_strides(q), *_strides(k), *_strides(v), *_strides(grad),
            *_strides(dk), *_strides(dv), *(_strides(dq_acc) if one_pass else (0, 0, 0)), H, S_q, S_k,
            scale * LOG2E, scale)
    if _uses_tma("flash_attention backward", kernel, cfg, q.dtype) and _tma_ready(q, k, v, grad, dk, dv):
        _attn_bwd_dkdv_tma[(triton.cdiv(S_k, cfg.n), B * H)](*args, ONE_PASS=one_pass, WARP_SPECIALIZE=False,
                                                             **_meta(D, cfg))
    else:
        _attn_bwd_dkdv[(triton.cdiv(S_k, cfg.n), B * H)](*args, ONE_PASS=one_pass, **_meta(D, cfg))
    if one_pass:
        return dq_acc.to(q.dtype), dk, dv
    dq = _alloc.empty_like(q)
    cfg = pick("dq")
    args = (q, k, v, grad, lse, delta, dq, *_strides(q), *_strides(k), *_strides(v), *_strides(grad), *_strides(dq),
            H, S_q, S_k, scale * LOG2E, scale)
    if _uses_tma("flash_attention backward", "dq", cfg, q.dtype) and _tma_ready(q, k, v, grad, dq):
        _attn_bwd_dq_tma[(triton.cdiv(S_q, cfg.m), B * H)](*args, WARP_SPECIALIZE=False, **_meta(D, cfg))
    else:
        _attn_bwd_dq[(triton.cdiv(S_q, cfg.m), B * H)](*args, **_meta(D, cfg))
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# tuning (cosmos_kernels.tuning; `cosmos tune`)
# ---------------------------------------------------------------------------------------------
TUNE_TILES = dict(m=(64, 128), n=(32, 64, 128), warps=(4, 8), stages=(2, 3))
REFERENCE_LIMIT = 1 << 24  # score elements up to which a tuning candidate is judged by the reference


def candidates(kernel: str, dtype: torch.dtype) -> list[Blocks]:
    """Every tile of TUNE_TILES for each variant of `kernel` (launch failures, e.g. too much
    shared memory, are dropped by the tuner)."""
    return [Blocks(m, n, w, st, var) for var in variants(kernel, dtype) for m in TUNE_TILES["m"]
            for n in TUNE_TILES["n"] for w in TUNE_TILES["warps"] for st in TUNE_TILES["stages"]]


def tune(kernel: str, shape, dtype: torch.dtype, device, *, timer=None, max_candidates: int | None = None,
         seed: int = 0) -> tuning.Outcome:
    """Tune one kernel of this family on one problem shape (B, S_q, S_k, H, D): random inputs, each
    candidate judged against the reference (or, above REFERENCE_LIMIT score elements where that does
    not fit, against the built-in configuration's outputs, itself tested against the reference)."""
    from cosmos_kernels.reference import flash_attention as ref
    from cosmos_kernels.testing import TF32, rel_err, threshold

    if kernel not in KERNELS:
        raise ValueError(f"flash_attention tuning: kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    if kernel == "bwd_fused" and not one_pass_backward(shape[-1], dtype):
        raise ValueError(f"flash_attention tuning: no one-pass backward for {dtype} at D={shape[-1]} (it spills)")
    B, S_q, S_k, H, D = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    make = lambda s: torch.randn(s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    q, k, v = make((B, S_q, H, D)), make((B, S_k, H, D)), make((B, S_k, H, D))
    tq, tk, tv, grad = make(q.shape), make(k.shape), make(v.shape), make(q.shape)
    scale = ref.default_scale(D)
    out, lse = forward(q, k, v, scale, config("fwd", D, dtype))

    def run(cfg):
        if kernel == "fwd":
            return forward(q, k, v, scale, cfg)[:1]
        if kernel == "jvp":
            return forward_jvp(q, k, v, tq, tk, tv, scale, cfg)[:2]
        return backward(grad, q, k, v, out, lse, scale, None, kernel != "bwd_fused", {kernel: cfg})

    default = config(kernel, D, dtype)
    if B * H * S_q * S_k <= REFERENCE_LIMIT:
        wide = [t.double() for t in (q, k, v)]
        if kernel == "fwd":
            expect = (ref.attention(*wide, scale),)
        elif kernel == "jvp":
            expect = ref.attention_jvp(*wide, *(t.double() for t in (tq, tk, tv)), scale)[:2]
        else:
            leaves = [t.requires_grad_() for t in wide]
            expect = torch.autograd.grad(ref.attention(*leaves, scale), leaves, grad.double())
    else:
        expect = tuple(t.double() for t in run(default))

    def error(outputs):
        return max(rel_err(o, e) for o, e in zip(outputs, expect))

    cands = candidates(kernel, dtype)
    if max_candidates is not None:
        cands = cands[:max_candidates]
    tol = threshold(dtype, grad=kernel != "fwd")
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        tol = TF32 * (1 if kernel == "fwd" else 2)  # fp32 inputs run tf32 dots on the GPU
    return tuning.tune(kernel, shape, dtype, device, seq_len=loop_length(kernel, S_q, S_k), candidates=cands,
                       default=default, run=run, error=error, tolerance=tol, timer=timer)


# ---------------------------------------------------------------------------------------------
# H100 launch configurations for the sm_90a compile report
# ---------------------------------------------------------------------------------------------
_FP32_POINTERS = {"LSE", "TLSE", "DELTA", "DLSE", "DQ_ACC"}
_FLOAT_SCALARS = {"qk_scale", "scale"}
AOT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# every BLOCK_D bucket with an unpadded head dim, plus one padded head dim (D=96 in BLOCK_D=128)
AOT_HEAD_DIMS = (32, 64, 128)
AOT_PADDED = (("bf16", 96),)


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    """Argument types as the runtime sees them: upper-case names are pointers (the data dtype, or
    fp32 for the row statistics), the scales are fp32, every other argument an i32 size/stride."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.isupper():
            sig[name] = "*fp32" if name in _FP32_POINTERS else f"*{dtype}"
        else:
            sig[name] = "fp32" if name in _FLOAT_SCALARS else "i32"
    return sig


def _spec(label: str, fn, dtype: str, head_dim: int, cfg: Blocks, wgmma: bool = True, expect_tma: bool = False,
          expect_warp_specialized: bool = False, **extra) -> AotSpec:
    const = {"HEAD_DIM": head_dim, "BLOCK_D": block_d(head_dim), "BLOCK_M": cfg.m} | extra
    if cfg.n:
        const["BLOCK_N"] = cfg.n
    # pointers are 16-byte aligned and strides multiples of 16 (D % 16 == 0) at every launch
    aligned = tuple(a for a in fn.arg_names if a not in const
                    and (a.isupper() or (a.startswith("s") and a not in _FLOAT_SCALARS)))
    return AotSpec(f"flash_attention:{label}[{dtype},D={head_dim}]", fn, _signature(fn, dtype, const), const,
                   num_warps=cfg.warps, num_stages=cfg.stages, expect_wgmma=wgmma, aligned=aligned,
                   expect_tma=expect_tma, expect_warp_specialized=expect_warp_specialized)


def _aot_specs() -> list[AotSpec]:
    cases = [(dt, d) for dt in AOT_DTYPES for d in AOT_HEAD_DIMS] + list(AOT_PADDED)
    specs = []
    for dt, d in cases:
        torch_dtype = AOT_DTYPES[dt]
        specs += [
            _spec("fwd", _attn_fwd, dt, d, config("fwd", d, torch_dtype)),
            _spec("jvp", _attn_jvp, dt, d, config("jvp", d, torch_dtype)),
            _spec("bwd_pre", _bwd_preprocess, dt, d, PRE, wgmma=False, HAS_DLSE=False),
            _spec("bwd_pre_dlse", _bwd_preprocess, dt, d, PRE, wgmma=False, HAS_DLSE=True),
            _spec("bwd_dkdv", _attn_bwd_dkdv, dt, d, config("dkdv", d, torch_dtype), ONE_PASS=False),
            _spec("bwd_dq", _attn_bwd_dq, dt, d, config("dq", d, torch_dtype)),
        ]
        if one_pass_backward(d, torch_dtype):
            specs.append(_spec("bwd_fused", _attn_bwd_dkdv, dt, d, config("bwd_fused", d, torch_dtype), ONE_PASS=True))
        # the Hopper paths: TMA (and warp specialization), each at its table's tile
        for kernel, fn, label, extra in (("fwd", _attn_fwd_tma, "fwd", {}), ("jvp", _attn_jvp_tma, "jvp", {}),
                                         ("dkdv", _attn_bwd_dkdv_tma, "bwd_dkdv", {"ONE_PASS": False}),
                                         ("bwd_fused", _attn_bwd_dkdv_tma, "bwd_fused", {"ONE_PASS": True}),
                                         ("dq", _attn_bwd_dq_tma, "bwd_dq", {})):
            for variant in variants(kernel, torch_dtype)[1:]:
                if has_config(kernel, d, torch_dtype, variant):
                    specs.append(_spec(f"{label}_{variant}", fn, dt, d, config(kernel, d, torch_dtype, variant),
                                       expect_tma=True, expect_warp_specialized=variant == "tma_ws",
                                       WARP_SPECIALIZE=variant == "tma_ws", **extra))
    return specs


AOT_SPECS = _aot_specs()
