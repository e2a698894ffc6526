"""Triton kernels of the 3D RoPE family (see cosmos_kernels/rope.py for the ops).

Layout: x is (B, S, H, D) with any strides but a contiguous last dim; outputs are contiguous. A
program owns a run of tokens (b, s); per token it loads the angle row freqs[s] once, takes its
cos/sin once, and reuses them for every head, tiled as [BLOCK_H heads, BLOCK_HALF] on each half of
D (RoPE pairs element i with i + D/2, so the two halves are separate tiles). RMSNorm is a
row reduction over both tiles. The weight gradient of the norm is summed over the program's tokens
in registers and written as one partial row per program; the op sums those rows (no atomics:
deterministic). q and k are handled by one launch: the first programs take q's tokens, the rest k's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc
from cosmos_kernels.triton import AotSpec

NUM_WARPS = 4
TILE = 1024            # elements per half-tile [BLOCK_H, BLOCK_HALF]: 8 per thread at 4 warps
BWD_TILE = 512         # the backward keeps ~8 tiles live (two accumulators): half the tile, no spills
FWD_PROGRAMS = 132 * 32  # target grid: ~32 programs per H100 SM, a few tokens each at 720p
BWD_PROGRAMS = 132 * 8   # fewer for the backward: one partial weight-gradient row per program


def blocks(head_dim: int, heads: int, tile: int = TILE) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_HALF) for a head dim and head count."""
    block_half = triton.next_power_of_2(head_dim // 2)
    block_h = max(1, min(triton.next_power_of_2(heads), tile // block_half))
    return block_h, block_half


def tokens_per_program(tokens: int, programs: int) -> int:
    return max(1, triton.cdiv(tokens, programs))


@triton.jit
def _rotate(x1, x2, c1, s1, c2, s2, TRANSPOSED: tl.constexpr):
    """RoPE on the two halves: [x1 c1 - x2 s1, x2 c2 + x1 s2]; its transpose (the backward):
    [x1 c1 + x2 s2, x2 c2 - x1 s1]. cos/sin rows broadcast over the heads axis."""
    if TRANSPOSED:
        return x1 * c1[None, :] + x2 * s2[None, :], x2 * c2[None, :] - x1 * s1[None, :]
    return x1 * c1[None, :] - x2 * s1[None, :], x2 * c2[None, :] + x1 * s2[None, :]


@triton.jit
def _cos_sin(F, s, sf, d, dmask, HALF):
    a1 = tl.load(F + s * sf + d, mask=dmask, other=0.0).to(tl.float32)
    a2 = tl.load(F + s * sf + HALF + d, mask=dmask, other=0.0).to(tl.float32)
    return tl.cos(a1), tl.sin(a1), tl.cos(a2), tl.sin(a2)


@triton.jit
def _load_halves(ptr, h, sh, d, mask, HALF):
    p = ptr + h[:, None] * sh + d[None, :]
    return (tl.load(p, mask=mask, other=0.0).to(tl.float32),
            tl.load(p + HALF, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def _store_halves(ptr, h, HALF, D, d, mask, v1, v2):
    # outputs are contiguous: head stride D
    p = ptr + h[:, None] * D + d[None, :]
    tl.store(p, v1.to(ptr.dtype.element_ty), mask=mask)
    tl.store(p + HALF, v2.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _token_base(tok, S, sb, ss):
    b = tl.cast(tok // S, tl.int64)
    s = tok % S
    return b * sb + tl.cast(s, tl.int64) * ss, s


# ---------------------------------------------------------------------------------------------
# apply_rope3d: out = rope(x) (forward), or rope^T(grad) (backward, TRANSPOSED)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _rope_apply(X, F, OUT, S, H, tokens, per_prog, sxb, sxs, sxh, sf,
                HALF: tl.constexpr, TRANSPOSED: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < HALF
    start = tl.program_id(0) * per_prog
    end = tl.minimum(start + per_prog, tokens)
    for tok in range(start, end):
        base, s = _token_base(tok, S, sxb, sxs)
        c1, s1, c2, s2 = _cos_sin(F, s, sf, d, dmask, HALF)
        out = OUT + tl.cast(tok, tl.int64) * H * (2 * HALF)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            mask = (h < H)[:, None] & dmask[None, :]
            x1, x2 = _load_halves(X + base, h, sxh, d, mask, HALF)
            o1, o2 = _rotate(x1, x2, c1, s1, c2, s2, TRANSPOSED)
            _store_halves(out, h, HALF, 2 * HALF, d, mask, o1, o2)


def _launch_rope(x: torch.Tensor, freqs: torch.Tensor, transposed: bool) -> torch.Tensor:
    B, S, H, D = x.shape
    out = _alloc.empty(B, S, H, D, dtype=x.dtype, device=x.device)
    tokens = B * S
    if tokens == 0 or H == 0:
        return out
    per_prog = tokens_per_program(tokens, FWD_PROGRAMS)
    block_h, block_half = blocks(D, H)
    _rope_apply[(triton.cdiv(tokens, per_prog),)](
        x, freqs, out, S, H, tokens, per_prog, x.stride(0), x.stride(1), x.stride(2), freqs.stride(0),
        HALF=D // 2, TRANSPOSED=transposed, BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=NUM_WARPS)
    return out


def apply_rope3d(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return _launch_rope(x, freqs, transposed=False)


def apply_rope3d_backward(grad: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return _launch_rope(grad, freqs, transposed=True)


# ---------------------------------------------------------------------------------------------
# qk_norm_rope: RMSNorm per head (+ RoPE) for q and k in one launch
# ---------------------------------------------------------------------------------------------
@triton.jit
def _rms(x1, x2, D, eps):
    """rsqrt(mean(x^2) + eps) per head row of the two half-tiles (padding lanes are zero)."""
    return tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / D + eps)[:, None]


@triton.jit
def _norm_rope_fwd_tokens(X, W, OUT, F, S, H, tokens, per_prog, prog, sxb, sxs, sxh, sf, eps,
                          HALF: tl.constexpr, HAS_ROPE: tl.constexpr,
                          BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < HALF
    w1 = tl.load(W + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(W + HALF + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    start = prog * per_prog
    end = tl.minimum(start + per_prog, tokens)
    for tok in range(start, end):
        base, s = _token_base(tok, S, sxb, sxs)
        if HAS_ROPE:
            c1, s1, c2, s2 = _cos_sin(F, s, sf, d, dmask, HALF)
        out = OUT + tl.cast(tok, tl.int64) * H * (2 * HALF)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            mask = (h < H)[:, None] & dmask[None, :]
            x1, x2 = _load_halves(X + base, h, sxh, d, mask, HALF)
            r = _rms(x1, x2, 2 * HALF, eps)
            y1 = x1 * r * w1
            y2 = x2 * r * w2
            if HAS_ROPE:
                y1, y2 = _rotate(y1, y2, c1, s1, c2, s2, False)
            _store_halves(out, h, HALF, 2 * HALF, d, mask, y1, y2)


@triton.jit
def _qk_norm_rope_fwd(Q, WQ, QO, K, WK, KO, F,
                      Sq, Hq, tok_q, progs_q, sqb, sqs, sqh,
                      Sk, Hk, tok_k, skb, sks, skh,
                      per_prog, sf, eps,
                      HALF: tl.constexpr, HAS_ROPE: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pid = tl.program_id(0)
    if pid < progs_q:
        _norm_rope_fwd_tokens(Q, WQ, QO, F, Sq, Hq, tok_q, per_prog, pid, sqb, sqs, sqh, sf, eps,
                              HALF, HAS_ROPE, BLOCK_H, BLOCK_HALF)
    else:
        _norm_rope_fwd_tokens(K, WK, KO, F, Sk, Hk, tok_k, per_prog, pid - progs_q, skb, sks, skh, sf, eps,
                              HALF, HAS_ROPE, BLOCK_H, BLOCK_HALF)


@triton.jit
def _norm_rope_bwd_tokens(X, G, W, DX, DWP, F, S, H, tokens, per_prog, prog,
                          sxb, sxs, sxh, sgb, sgs, sgh, sf, eps,
                          HALF: tl.constexpr, HAS_ROPE: tl.constexpr,
                          BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < HALF
    w1 = tl.load(W + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(W + HALF + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    acc1 = tl.zeros([BLOCK_H, BLOCK_HALF], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_H, BLOCK_HALF], dtype=tl.float32)
    start = prog * per_prog
    end = tl.minimum(start + per_prog, tokens)
    for tok in range(start, end):
        xbase, s = _token_base(tok, S, sxb, sxs)
        gbase, _ = _token_base(tok, S, sgb, sgs)
        if HAS_ROPE:
            c1, s1, c2, s2 = _cos_sin(F, s, sf, d, dmask, HALF)
        dx_out = DX + tl.cast(tok, tl.int64) * H * (2 * HALF)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            mask = (h < H)[:, None] & dmask[None, :]
            dy1, dy2 = _load_halves(G + gbase, h, sgh, d, mask, HALF)
            if HAS_ROPE:
                dy1, dy2 = _rotate(dy1, dy2, c1, s1, c2, s2, True)
            x1, x2 = _load_halves(X + xbase, h, sxh, d, mask, HALF)
            r = _rms(x1, x2, 2 * HALF, eps)
            n1 = x1 * r
            n2 = x2 * r
            acc1 += dy1 * n1
            acc2 += dy2 * n2
            dn1 = dy1 * w1
            dn2 = dy2 * w2
            m = ((tl.sum(dn1 * n1, 1) + tl.sum(dn2 * n2, 1)) / (2 * HALF))[:, None]
            _store_halves(dx_out, h, HALF, 2 * HALF, d, mask, r * (dn1 - n1 * m), r * (dn2 - n2 * m))
    row = DWP + tl.cast(prog, tl.int64) * (2 * HALF)
    tl.store(row + d, tl.sum(acc1, 0), mask=dmask)
    tl.store(row + HALF + d, tl.sum(acc2, 0), mask=dmask)


@triton.jit
def _qk_norm_rope_bwd(Q, GQ, WQ, DQ, DWQ, K, GK, WK, DK, DWK, F,
                      Sq, Hq, tok_q, progs_q, sqb, sqs, sqh, sgqb, sgqs, sgqh,
                      Sk, Hk, tok_k, skb, sks, skh, sgkb, sgks, sgkh,
                      per_prog, sf, eps,
                      HALF: tl.constexpr, HAS_ROPE: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pid = tl.program_id(0)
    if pid < progs_q:
        _norm_rope_bwd_tokens(Q, GQ, WQ, DQ, DWQ, F, Sq, Hq, tok_q, per_prog, pid,
                              sqb, sqs, sqh, sgqb, sgqs, sgqh, sf, eps, HALF, HAS_ROPE, BLOCK_H, BLOCK_HALF)
    else:
        _norm_rope_bwd_tokens(K, GK, WK, DK, DWK, F, Sk, Hk, tok_k, per_prog, pid - progs_q,
                              skb, sks, skh, sgkb, sgks, sgkh, sf, eps, HALF, HAS_ROPE, BLOCK_H, BLOCK_HALF)


@triton.jit
def _norm_rope_jvp_tokens(X, TX, W, TW, OUT, F, S, H, tokens, per_prog, prog,
                          sxb, sxs, sxh, stb, sts, sth, sf, eps,
                          HALF: tl.constexpr, HAS_ROPE: tl.constexpr,
                          BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < HALF
    w1 = tl.load(W + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(W + HALF + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    tw1 = tl.load(TW + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    tw2 = tl.load(TW + HALF + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    start = prog * per_prog
    end = tl.minimum(start + per_prog, tokens)
    for tok in range(start, end):
        xbase, s = _token_base(tok, S, sxb, sxs)
        tbase, _ = _token_base(tok, S, stb, sts)
        if HAS_ROPE:
            c1, s1, c2, s2 = _cos_sin(F, s, sf, d, dmask, HALF)
        out = OUT + tl.cast(tok, tl.int64) * H * (2 * HALF)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            mask = (h < H)[:, None] & dmask[None, :]
            x1, x2 = _load_halves(X + xbase, h, sxh, d, mask, HALF)
            t1, t2 = _load_halves(TX + tbase, h, sth, d, mask, HALF)
            r = _rms(x1, x2, 2 * HALF, eps)
            n1 = x1 * r
            n2 = x2 * r
            m = ((tl.sum(n1 * t1, 1) + tl.sum(n2 * t2, 1)) / (2 * HALF))[:, None]
            # d(n * w) = w * r * (t - n * mean(n * t)) + tw * n
            y1 = w1 * r * (t1 - n1 * m) + tw1 * n1
            y2 = w2 * r * (t2 - n2 * m) + tw2 * n2
            if HAS_ROPE:
                y1, y2 = _rotate(y1, y2, c1, s1, c2, s2, False)
            _store_halves(out, h, HALF, 2 * HALF, d, mask, y1, y2)


@triton.jit
def _qk_norm_rope_jvp(Q, TQ, WQ, TWQ, QO, K, TK, WK, TWK, KO, F,
                      Sq, Hq, tok_q, progs_q, sqb, sqs, sqh, stqb, stqs, stqh,
                      Sk, Hk, tok_k, skb, sks, skh, stkb, stks, stkh,
                      per_prog, sf, eps,
                      HALF: tl.constexpr, HAS_ROPE: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pid = tl.program_id(0)
    if pid < progs_q:
        _norm_rope_jvp_tokens(Q, TQ, WQ, TWQ, QO, F, Sq, Hq, tok_q, per_prog, pid,
                              sqb, sqs, sqh, stqb, stqs, stqh, sf, eps, HALF, HAS_ROPE, BLOCK_H, BLOCK_HALF)
    else:
        _norm_rope_jvp_tokens(K, TK, WK, TWK, KO, F, Sk, Hk, tok_k, per_prog, pid - progs_q,
                              skb, sks, skh, stkb, stks, stkh, sf, eps, HALF, HAS_ROPE, BLOCK_H, BLOCK_HALF)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _plan(q: torch.Tensor, k: torch.Tensor, programs: int):
    """Tokens per program and the q/k program split; (per_prog, progs_q, progs_k)."""
    tok_q, tok_k = q.shape[0] * q.shape[1], k.shape[0] * k.shape[1]
    per_prog = tokens_per_program(tok_q + tok_k, programs)
    return per_prog, triton.cdiv(tok_q, per_prog), triton.cdiv(tok_k, per_prog)


def _freqs_args(freqs, like):
    # the kernel never reads F without HAS_ROPE; any tensor stands in for the pointer
    return (freqs, freqs.stride(0)) if freqs is not None else (like, 0)


def qk_norm_rope(q, k, q_weight, k_weight, freqs, eps):
    D = q.shape[3]
    q_out = _alloc.empty(*q.shape, dtype=q.dtype, device=q.device)
    k_out = _alloc.empty(*k.shape, dtype=k.dtype, device=k.device)
    per_prog, progs_q, progs_k = _plan(q, k, FWD_PROGRAMS)
    if progs_q + progs_k == 0:
        return q_out, k_out
    F, sf = _freqs_args(freqs, q)
    block_h, block_half = blocks(D, max(q.shape[2], k.shape[2]))
    _qk_norm_rope_fwd[(progs_q + progs_k,)](
        q, q_weight, q_out, k, k_weight, k_out, F,
        q.shape[1], q.shape[2], q.shape[0] * q.shape[1], progs_q, *_strides(q),
        k.shape[1], k.shape[2], k.shape[0] * k.shape[1], *_strides(k),
        per_prog, sf, eps,
        HALF=D // 2, HAS_ROPE=freqs is not None, BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=NUM_WARPS)
    return q_out, k_out


def qk_norm_rope_backward(grad_q, grad_k, q, k, q_weight, k_weight, freqs, eps):
    D = q.shape[3]
    dq = _alloc.empty(*q.shape, dtype=q.dtype, device=q.device)
    dk = _alloc.empty(*k.shape, dtype=k.dtype, device=k.device)
    per_prog, progs_q, progs_k = _plan(q, k, BWD_PROGRAMS)
    # one fp32 partial weight-gradient row per program, summed below (every row is written)
    dwq = _alloc.empty(progs_q, D, dtype=torch.float32, device=q.device)
    dwk = _alloc.empty(progs_k, D, dtype=torch.float32, device=k.device)
    if progs_q + progs_k:
        F, sf = _freqs_args(freqs, q)
        block_h, block_half = blocks(D, max(q.shape[2], k.shape[2]), BWD_TILE)
        _qk_norm_rope_bwd[(progs_q + progs_k,)](
            q, grad_q, q_weight, dq, dwq, k, grad_k, k_weight, dk, dwk, F,
            q.shape[1], q.shape[2], q.shape[0] * q.shape[1], progs_q, *_strides(q), *_strides(grad_q),
            k.shape[1], k.shape[2], k.shape[0] * k.shape[1], *_strides(k), *_strides(grad_k),
            per_prog, sf, eps,
            HALF=D // 2, HAS_ROPE=freqs is not None, BLOCK_H=block_h, BLOCK_HALF=block_half,
            num_warps=NUM_WARPS)
    return dq, dk, dwq.sum(0).to(q_weight.dtype), dwk.sum(0).to(k_weight.dtype)


def qk_norm_rope_jvp(q, k, q_weight, k_weight, tq, tk, tq_weight, tk_weight, freqs, eps):
    D = q.shape[3]
    tq_out = _alloc.empty(*q.shape, dtype=q.dtype, device=q.device)
    tk_out = _alloc.empty(*k.shape, dtype=k.dtype, device=k.device)
    per_prog, progs_q, progs_k = _plan(q, k, FWD_PROGRAMS)
    if progs_q + progs_k == 0:
        return tq_out, tk_out
    F, sf = _freqs_args(freqs, q)
    block_h, block_half = blocks(D, max(q.shape[2], k.shape[2]))
    _qk_norm_rope_jvp[(progs_q + progs_k,)](
        q, tq, q_weight, tq_weight, tq_out, k, tk, k_weight, tk_weight, tk_out, F,
        q.shape[1], q.shape[2], q.shape[0] * q.shape[1], progs_q, *_strides(q), *_strides(tq),
        k.shape[1], k.shape[2], k.shape[0] * k.shape[1], *_strides(k), *_strides(tk),
        per_prog, sf, eps,
        HALF=D // 2, HAS_ROPE=freqs is not None, BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=NUM_WARPS)
    return tq_out, tk_out


# ---------------------------------------------------------------------------------------------
# H100 launch configurations for `python -m cosmos_kernels.aot`
# ---------------------------------------------------------------------------------------------
def _sig(names_types: list[tuple[str, str]], constexprs: dict) -> dict:
    return dict(names_types) | {name: "constexpr" for name in constexprs}


def _aot_specs() -> list[AotSpec]:
    specs = []
    heads = 16  # the 2B model; the 14B's 40 heads use the same blocks
    for dt in ("bf16", "fp32"):
        p = f"*{dt}"
        for D in (128, 64):
            block_h, block_half = blocks(D, heads)
            for transposed in (False, True):
                cx = dict(HALF=D // 2, TRANSPOSED=transposed, BLOCK_H=block_h, BLOCK_HALF=block_half)
                args = [("X", p), ("F", "*fp32"), ("OUT", p)] + [(n, "i32") for n in
                        ("S", "H", "tokens", "per_prog", "sxb", "sxs", "sxh", "sf")]
                specs.append(AotSpec(f"rope_apply_{'bwd' if transposed else 'fwd'}[{dt},D={D}]",
                                     _rope_apply, _sig(args, cx), cx, num_warps=NUM_WARPS))
            for has_rope in (True, False):
                cx = dict(HALF=D // 2, HAS_ROPE=has_rope, BLOCK_H=block_h, BLOCK_HALF=block_half)
                tag = f"[{dt},D={D}{'' if has_rope else ',norm-only'}]"
                i32 = lambda *names: [(n, "i32") for n in names]  # noqa: E731
                fwd = ([("Q", p), ("WQ", p), ("QO", p), ("K", p), ("WK", p), ("KO", p), ("F", "*fp32")]
                       + i32("Sq", "Hq", "tok_q", "progs_q", "sqb", "sqs", "sqh", "Sk", "Hk", "tok_k",
                             "skb", "sks", "skh", "per_prog", "sf") + [("eps", "fp32")])
                specs.append(AotSpec(f"qk_norm_rope_fwd{tag}", _qk_norm_rope_fwd, _sig(fwd, cx), cx,
                                     num_warps=NUM_WARPS))
                bwd = ([("Q", p), ("GQ", p), ("WQ", p), ("DQ", p), ("DWQ", "*fp32"),
                        ("K", p), ("GK", p), ("WK", p), ("DK", p), ("DWK", "*fp32"), ("F", "*fp32")]
                       + i32("Sq", "Hq", "tok_q", "progs_q", "sqb", "sqs", "sqh", "sgqb", "sgqs", "sgqh",
                             "Sk", "Hk", "tok_k", "skb", "sks", "skh", "sgkb", "sgks", "sgkh", "per_prog", "sf")
                       + [("eps", "fp32")])
                bh, _ = blocks(D, heads, BWD_TILE)
                cxb = cx | {"BLOCK_H": bh}
                specs.append(AotSpec(f"qk_norm_rope_bwd{tag}", _qk_norm_rope_bwd, _sig(bwd, cxb), cxb,
                                     num_warps=NUM_WARPS))
                jvp = ([("Q", p), ("TQ", p), ("WQ", p), ("TWQ", p), ("QO", p),
                        ("K", p), ("TK", p), ("WK", p), ("TWK", p), ("KO", p), ("F", "*fp32")]
                       + i32("Sq", "Hq", "tok_q", "progs_q", "sqb", "sqs", "sqh", "stqb", "stqs", "stqh",
                             "Sk", "Hk", "tok_k", "skb", "sks", "skh", "stkb", "stks", "stkh", "per_prog", "sf")
                       + [("eps", "fp32")])
                specs.append(AotSpec(f"qk_norm_rope_jvp{tag}", _qk_norm_rope_jvp, _sig(jvp, cx), cx,
                                     num_warps=NUM_WARPS))
    return specs


AOT_SPECS = _aot_specs()
