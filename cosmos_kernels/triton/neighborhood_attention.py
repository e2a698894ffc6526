"""Triton kernels of 3D neighborhood attention (ops in cosmos_kernels/neighborhood_attention.py,
semantics in cosmos_kernels/reference/neighborhood_attention.py).

Tiling
------
Tokens stay where they are in memory ((B, S, heads, D), t-major); the kernels compute the address
of every token they touch from its (t, h, w) coordinate, so there is no permutation pass. What is
tiled is the *coordinate space* of one dilation group (coordinates x = X // d of the tokens with
X % d == g, per axis): a tile is a box of QT×QH×QW queries in BLOCK_M rows (a power of two, e.g.
4×4×8 = 128) or KT×KH×KW keys in BLOCK_N rows (e.g. 2×4×8 = 64). With the official window (full
along T, stride (1, 4, 8)) a 4×8 (h, w) tile is exactly one stride group, so all its queries share
one window and the keys it needs are exactly that window. A box may be smaller than its rows (at
480p the stride is (1, 3, 5): 8×3×5 = 120 queries in 128 rows, whole stride groups); the padding
rows fall past the box along t, are loaded clamped, never stored, and as keys masked out.

Forward, dq and JVP: one program per (query tile, batch·head). Window bounds are monotone in the
query coordinate, so along each axis the union of the windows of a query tile [x0, x1] is the
interval [start(x0), end(x1)]; the keys the tile needs are the box of these three intervals,
which the program walks in key tiles (key tiles start at the union's corner, not on a global
grid, so the box is covered by the fewest tiles). Key tiles outside the union are never visited.
A key tile inside [start(x1), end(x0)] on all three axes is inside every query's window and runs
unmasked; a partially covered one is masked in the kernel from the query and key coordinates
(window starts recomputed in the masked branch), never from a dense mask tensor.

dk/dv: one program per (key tile, batch·head), the transpose: along each axis the queries whose
windows reach keys [y0, y1] are [min{x: end(x) ≥ y0}, max{x: start(x) ≤ y1}], found in-kernel by a
vectorised search over the axis, and walked in query tiles the same way.

All kernels use exp2 with log2(e) folded into the scale and fp32 accumulation (tl.dot); the
forward keeps an online softmax and saves the log-sum-exp, the backward (dq; dk/dv) and the JVP
recompute P = exp(S − lse) from it (O(S) memory: no score matrix is stored). The JVP takes the
forward's out and lse (forward mode runs the primal first anyway), so it is one pass with one
accumulator: tO = P·tV + (P ⊙ tS)·V − r·O, t_lse = r = Σ P ⊙ tS, tS = (tQ·Kᵀ + Q·tKᵀ)·scale.
Masked scores are a large finite negative (not -inf) so a row whose first visited tiles are all
masked never produces NaN: its placeholder terms are scaled by exactly 0 when the first key of its
window arrives (every query has one, so the result is exact).

Rows past the grid's edge are clamped to an in-grid token for loading (never stored) and keys past
the union's edge likewise (their scores masked), so no load needs a row mask; row offsets are
int32 unless S × stride could pass 2^31 (registers are the tight resource in the compile report).

The tile shapes are chosen on the host (`plan`): per axis, the number of inner tiles visited (and
of them masked) is counted exactly from the window formula for every candidate tile size (powers
of two, multiples of the stride, the axis extent); the counts are separable across axes, so the
shape pair with the fewest visited tiles, then fewest masked ones, is found by a small search. On
the official 720p windows (full along T, stride (1, 4, 8)) the plan computes exactly the attended
pairs: no tile is partially covered. At 480p (stride (1, 3, 5)) tiles of whole stride groups bring
the forward, dq and JVP from 1.3-1.5x the attended pairs (power-of-two boxes) to 1.13-1.2x; they
are opt-in (COSMOS_KERNELS_NATTEN_PADDED_TILES=1) until a GPU measurement shows them faster; dk/dv
keeps power-of-two boxes (padding gains it ~2% there and spills registers).
"""
from __future__ import annotations

import itertools
import math
import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc
from cosmos_kernels.triton import AotSpec
from cosmos_kernels.reference import neighborhood_attention as ref

LOG2E = 1.4426950408889634
# in-kernel constants (Triton reads globals only as constexpr)
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)
_MASKED = tl.constexpr(-1.0e30)  # masked scores (log2 domain): finite, so exp2(_MASKED - _MASKED) = 1, never NaN


# ---------------------------------------------------------------------------------------------
# geometry shared by every kernel (all in dilation-group coordinates)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _group_size(length, dil, group):
    return (length - group + dil - 1) // dil


@triton.jit
def _win_start(x, n, ks, st, CAUSAL: tl.constexpr):
    """First key of the window of query x (group of n positions): NATTEN's leader rule."""
    if CAUSAL:
        leader = tl.minimum((x // st) * st + st - 1, n - 1)
        start = tl.maximum(leader - ks + 1, 0)
    else:
        leader = tl.minimum((x // st) * st + st // 2, n - 1)
        centre = tl.minimum(tl.maximum(leader, ks // 2), n - 1 - (ks - 1 - ks // 2))
        start = centre - ks // 2
    return start


@triton.jit
def _win_end(x, n, ks, st, CAUSAL: tl.constexpr):
    """Last key (inclusive) of the window of query x."""
    if CAUSAL:
        end = x
    else:
        end = _win_start(x, n, ks, st, CAUSAL) + ks - 1
    return end


@triton.jit
def _box(c0_t, c0_h, c0_w, A_T: tl.constexpr, A_H: tl.constexpr, A_W: tl.constexpr, ROWS: tl.constexpr):
    """Coordinates of the A_T×A_H×A_W box starting at (c0_t, c0_h, c0_w), w fastest, in ROWS rows
    (a power of two >= the box's size: the rows past it, padding, fall past the box along t)."""
    r = tl.arange(0, ROWS)
    return c0_t + r // (A_H * A_W), c0_h + (r // A_W) % A_H, c0_w + r % A_W


@triton.jit
def _box_rows(A_T: tl.constexpr, A_H: tl.constexpr, A_W: tl.constexpr, ROWS: tl.constexpr):
    """Which of the ROWS rows of a box are in it (the rest pad it to a power of two)."""
    return tl.arange(0, ROWS) < A_T * A_H * A_W


@triton.jit
def _token(ct, ch, cw, gt, gh, gw, DT, DH, DW, LH, LW, OFF64: tl.constexpr):
    """Flat t-major token index of group coordinates (ct, ch, cw) in group (gt, gh, gw). Row
    offsets stay int32 (registers are the H100 limit here) unless S × token stride needs int64."""
    tok = ((ct * DT + gt) * LH + (ch * DH + gh)) * LW + (cw * DW + gw)
    if OFF64:
        tok = tok.to(tl.int64)
    return tok


@triton.jit
def _outer_tile(pid, NT_T, NT_H, NT_W, DT, DH, DW):
    """Program id -> (tile index per axis, dilation group per axis); w tiles fastest."""
    iw = pid % NT_W
    r = pid // NT_W
    ih = r % NT_H
    r = r // NT_H
    it = r % NT_T
    r = r // NT_T
    gw = r % DW
    r = r // DW
    gh = r % DH
    gt = r // DH
    return it, ih, iw, gt, gh, gw


@triton.jit
def _query_span(x0, n, ks, st, Q: tl.constexpr, K: tl.constexpr, CAUSAL: tl.constexpr):
    """One axis of a query tile [x0, x0 + Q): union of its windows [lo, hi], the number of key
    tiles of K covering it, and [in_lo, in_hi], the keys inside every query's window."""
    x1 = tl.minimum(x0 + Q - 1, n - 1)
    lo = _win_start(x0, n, ks, st, CAUSAL)
    hi = _win_end(x1, n, ks, st, CAUSAL)
    count = (hi - lo + K) // K
    in_lo = _win_start(x1, n, ks, st, CAUSAL)
    in_hi = _win_end(x0, n, ks, st, CAUSAL)
    return lo, hi, count, in_lo, in_hi


@triton.jit
def _key_span(y0, n, ks, st, K: tl.constexpr, Q: tl.constexpr, CAUSAL: tl.constexpr, NPOW: tl.constexpr):
    """One axis of a key tile [y0, y0 + K): the queries whose windows reach it, [x_lo, x_hi]
    (vectorised search over the axis, NPOW >= n), the number of query tiles of Q covering them,
    and y1, the last real key of the tile."""
    y1 = tl.minimum(y0 + K - 1, n - 1)
    xs = tl.arange(0, NPOW)
    real = xs < n
    xc = tl.minimum(xs, n - 1)
    x_lo = tl.min(tl.where(real & (_win_end(xc, n, ks, st, CAUSAL) >= y0), xs, NPOW), 0)
    x_hi = tl.max(tl.where(real & (_win_start(xc, n, ks, st, CAUSAL) <= y1), xs, -1), 0)
    count = tl.where(x_hi >= x_lo, (x_hi - x_lo + Q) // Q, 0)
    return y1, x_lo, x_hi, count


@triton.jit
def _axis_in(y, x, n, ks, st, CAUSAL: tl.constexpr, KEYS_ON_ROWS: tl.constexpr):
    """One axis of the mask: key coordinates y in the windows of query coordinates x, as a
    [query, key] tile (or [key, query] with KEYS_ON_ROWS). Only the query coordinates stay live
    in the loop; the window start is recomputed here, in the masked branch, and a non-causal
    window always holds exactly ks keys (no end bound to keep)."""
    lo = _win_start(x, n, ks, st, CAUSAL)
    if KEYS_ON_ROWS:
        d = y[:, None] - lo[None, :]
        after_query = y[:, None] > x[None, :]
    else:
        d = y[None, :] - lo[:, None]
        after_query = y[None, :] > x[:, None]
    if CAUSAL:
        inside = (d >= 0) & (after_query == 0)
    else:
        inside = (d >= 0) & (d < ks)
    return inside


@triton.jit
def _in_window(yt, yh, yw, xt, xh, xw, n_t, n_h, n_w, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W,
               CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr,
               KEYS_ON_ROWS: tl.constexpr):
    """The neighborhood mask of a (query tile, key tile) pair from per-axis coordinates."""
    m = _axis_in(yt, xt, n_t, KS_T, ST_T, CAUSAL_T, KEYS_ON_ROWS)
    m = m & _axis_in(yh, xh, n_h, KS_H, ST_H, CAUSAL_H, KEYS_ON_ROWS)
    m = m & _axis_in(yw, xw, n_w, KS_W, ST_W, CAUSAL_W, KEYS_ON_ROWS)
    return m


@triton.jit
def _load_rows(base, tok, stride, offs_d, D, EVEN_D: tl.constexpr):
    """(rows, BLOCK_D) tile of the tokens `tok`. Callers clamp coordinates into the grid, so only
    the head dim can need a mask: rows that must not count are masked on the scores instead."""
    ptrs = base + tok[:, None] * stride + offs_d[None, :]
    if EVEN_D:
        rows = tl.load(ptrs)
    else:
        rows = tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)
    return rows


@triton.jit
def _mm(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation. UPCAST (the interpreter with bf16 only: its tl.dot
    misreads bf16 operands) multiplies the same bf16-rounded values in fp32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PREC)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _na3d_fwd(Q, K, V, O, LSE, VISITS,
              sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
              HEADS, S, D,
              LT, LH, LW, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W, DT, DH, DW,
              NT_T, NT_H, NT_W, qk_scale,
              CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr,
              QT: tl.constexpr, QH: tl.constexpr, QW: tl.constexpr,
              KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, OFF64: tl.constexpr, DOT_PREC: tl.constexpr,
              UPCAST: tl.constexpr, COUNT_VISITS: tl.constexpr):
    PAD_N: tl.constexpr = KT * KH * KW < BLOCK_N
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    it, ih, iw, gt, gh, gw = _outer_tile(pid, NT_T, NT_H, NT_W, DT, DH, DW)
    n_t = _group_size(LT, DT, gt)
    n_h = _group_size(LH, DH, gh)
    n_w = _group_size(LW, DW, gw)
    x0_t, x0_h, x0_w = it * QT, ih * QH, iw * QW

    # query rows: coordinates (clamped for padding rows) and token index
    xt, xh, xw = _box(x0_t, x0_h, x0_w, QT, QH, QW, BLOCK_M)
    row_ok = (xt < n_t) & (xh < n_h) & (xw < n_w) & _box_rows(QT, QH, QW, BLOCK_M)
    xt = tl.minimum(xt, n_t - 1)
    xh = tl.minimum(xh, n_h - 1)
    xw = tl.minimum(xw, n_w - 1)
    tok_q = _token(xt, xh, xw, gt, gh, gw, DT, DH, DW, LH, LW, OFF64)

    # the key box this tile needs, in key tiles
    u_lo_t, u_hi_t, c_t, in_lo_t, in_hi_t = _query_span(x0_t, n_t, KS_T, ST_T, QT, KT, CAUSAL_T)
    u_lo_h, u_hi_h, c_h, in_lo_h, in_hi_h = _query_span(x0_h, n_h, KS_H, ST_H, QH, KH, CAUSAL_H)
    u_lo_w, u_hi_w, c_w, in_lo_w, in_hi_w = _query_span(x0_w, n_w, KS_W, ST_W, QW, KW, CAUSAL_W)
    n_iter = tl.where((x0_t < n_t) & (x0_h < n_h) & (x0_w < n_w), c_t * c_h * c_w, 0)
    n_masked = 0

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = _load_rows(Q + b * sqb + h * sqh, tok_q, sqs, offs_d, D, EVEN_D)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh

    m_i = tl.full([BLOCK_M], _MASKED, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in range(0, n_iter):
        jw = j % c_w
        jh = (j // c_w) % c_h
        jt = j // (c_w * c_h)
        y0_t, y0_h, y0_w = u_lo_t + jt * KT, u_lo_h + jh * KH, u_lo_w + jw * KW
        yt, yh, yw = _box(y0_t, y0_h, y0_w, KT, KH, KW, BLOCK_N)
        # keys past the union (tile edge) load a clamped in-grid token; their scores are masked
        tok_k = _token(tl.minimum(yt, u_hi_t), tl.minimum(yh, u_hi_h), tl.minimum(yw, u_hi_w),
                       gt, gh, gw, DT, DH, DW, LH, LW, OFF64)
        k = _load_rows(k_base, tok_k, sks, offs_d, D, EVEN_D)
        v = _load_rows(v_base, tok_k, svs, offs_d, D, EVEN_D)
        s = _mm(q, tl.trans(k), None, DOT_PREC, UPCAST) * qk_scale
        partial = ((y0_t < in_lo_t) | (y0_t + KT - 1 > in_hi_t) | (y0_h < in_lo_h) | (y0_h + KH - 1 > in_hi_h)
                   | (y0_w < in_lo_w) | (y0_w + KW - 1 > in_hi_w))
        if partial:
            s = tl.where(_in_window(yt, yh, yw, xt, xh, xw, n_t, n_h, n_w, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W,
                                     CAUSAL_T, CAUSAL_H, CAUSAL_W, False), s, _MASKED)
        if PAD_N:  # padding keys (a tile smaller than its block) never count
            s = tl.where(_box_rows(KT, KH, KW, BLOCK_N)[None, :], s, _MASKED)
        if COUNT_VISITS:
            n_masked += partial.to(tl.int32)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _mm(p.to(v.dtype), v, acc * alpha[:, None], DOT_PREC, UPCAST)
        m_i = m_new

    if COUNT_VISITS:  # tests: key tiles walked and of them masked, per query-tile program
        tl.store(VISITS + pid, n_iter, mask=bh == 0)
        tl.store(VISITS + tl.num_programs(0) + pid, n_masked, mask=bh == 0)
    l_i = tl.where(l_i > 0.0, l_i, 1.0)  # only the empty tiles of a smaller dilation group have none
    out = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + tok_q[:, None] * sos + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * S + tok_q, (m_i + tl.math.log2(l_i)) * _LN2, mask=row_ok)


# ---------------------------------------------------------------------------------------------
# backward: delta = rowsum(dO * O) - dlse, then dq (per query tile) and dk, dv (per key tile)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _na3d_bwd_delta(O, DO, DLSE, DELTA, sob, sos, soh, sdob, sdos, sdoh, HEADS, S, D,
                    HAS_DLSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    ok = rows < S
    mask = ok[:, None] & (offs_d < D)[None, :]
    r64 = rows.to(tl.int64)
    o = tl.load(O + b * sob + h * soh + r64[:, None] * sos + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdob + h * sdoh + r64[:, None] * sdos + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + bh.to(tl.int64) * S + r64, mask=ok, other=0.0)
    tl.store(DELTA + bh.to(tl.int64) * S + r64, delta, mask=ok)


@triton.jit
def _na3d_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdob, sdos, sdoh, sdqb, sdqs, sdqh,
                 HEADS, S, D,
                 LT, LH, LW, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W, DT, DH, DW,
                 NT_T, NT_H, NT_W, qk_scale, sm_scale,
                 CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr,
                 QT: tl.constexpr, QH: tl.constexpr, QW: tl.constexpr,
                 KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, OFF64: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    PAD_N: tl.constexpr = KT * KH * KW < BLOCK_N
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    it, ih, iw, gt, gh, gw = _outer_tile(pid, NT_T, NT_H, NT_W, DT, DH, DW)
    n_t = _group_size(LT, DT, gt)
    n_h = _group_size(LH, DH, gh)
    n_w = _group_size(LW, DW, gw)
    x0_t, x0_h, x0_w = it * QT, ih * QH, iw * QW

    xt, xh, xw = _box(x0_t, x0_h, x0_w, QT, QH, QW, BLOCK_M)
    row_ok = (xt < n_t) & (xh < n_h) & (xw < n_w) & _box_rows(QT, QH, QW, BLOCK_M)
    xt = tl.minimum(xt, n_t - 1)
    xh = tl.minimum(xh, n_h - 1)
    xw = tl.minimum(xw, n_w - 1)
    tok_q = _token(xt, xh, xw, gt, gh, gw, DT, DH, DW, LH, LW, OFF64)

    u_lo_t, u_hi_t, c_t, in_lo_t, in_hi_t = _query_span(x0_t, n_t, KS_T, ST_T, QT, KT, CAUSAL_T)
    u_lo_h, u_hi_h, c_h, in_lo_h, in_hi_h = _query_span(x0_h, n_h, KS_H, ST_H, QH, KH, CAUSAL_H)
    u_lo_w, u_hi_w, c_w, in_lo_w, in_hi_w = _query_span(x0_w, n_w, KS_W, ST_W, QW, KW, CAUSAL_W)
    n_iter = tl.where((x0_t < n_t) & (x0_h < n_h) & (x0_w < n_w), c_t * c_h * c_w, 0)

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row_mask = row_ok[:, None] & d_ok[None, :]
    q = _load_rows(Q + b * sqb + h * sqh, tok_q, sqs, offs_d, D, EVEN_D)
    do = _load_rows(DO + b * sdob + h * sdoh, tok_q, sdos, offs_d, D, EVEN_D)
    lse2 = tl.load(LSE + bh.to(tl.int64) * S + tok_q) * _LOG2E
    delta = tl.load(DELTA + bh.to(tl.int64) * S + tok_q)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in range(0, n_iter):
        jw = j % c_w
        jh = (j // c_w) % c_h
        jt = j // (c_w * c_h)
        y0_t, y0_h, y0_w = u_lo_t + jt * KT, u_lo_h + jh * KH, u_lo_w + jw * KW
        yt, yh, yw = _box(y0_t, y0_h, y0_w, KT, KH, KW, BLOCK_N)
        # keys past the union (tile edge) load a clamped in-grid token; their scores are masked
        tok_k = _token(tl.minimum(yt, u_hi_t), tl.minimum(yh, u_hi_h), tl.minimum(yw, u_hi_w),
                       gt, gh, gw, DT, DH, DW, LH, LW, OFF64)
        k = _load_rows(k_base, tok_k, sks, offs_d, D, EVEN_D)
        v = _load_rows(v_base, tok_k, svs, offs_d, D, EVEN_D)
        s = _mm(q, tl.trans(k), None, DOT_PREC, UPCAST) * qk_scale
        partial = ((y0_t < in_lo_t) | (y0_t + KT - 1 > in_hi_t) | (y0_h < in_lo_h) | (y0_h + KH - 1 > in_hi_h)
                   | (y0_w < in_lo_w) | (y0_w + KW - 1 > in_hi_w))
        if partial:
            s = tl.where(_in_window(yt, yh, yw, xt, xh, xw, n_t, n_h, n_w, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W,
                                     CAUSAL_T, CAUSAL_H, CAUSAL_W, False), s, _MASKED)
        if PAD_N:  # padding keys (a tile smaller than its block) never count
            s = tl.where(_box_rows(KT, KH, KW, BLOCK_N)[None, :], s, _MASKED)
        p = tl.math.exp2(s - lse2[:, None])
        dp = _mm(do, tl.trans(v), None, DOT_PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq = _mm(ds.to(k.dtype), k, dq, DOT_PREC, UPCAST)

    dq = dq * sm_scale
    tl.store(DQ + b * sdqb + h * sdqh + tok_q[:, None] * sdqs + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_mask)


@triton.jit
def _na3d_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV,
                   sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdob, sdos, sdoh,
                   sdkb, sdks, sdkh, sdvb, sdvs, sdvh,
                   HEADS, S, D,
                   LT, LH, LW, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W, DT, DH, DW,
                   NT_T, NT_H, NT_W, qk_scale, sm_scale,
                   CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr,
                   KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                   QT: tl.constexpr, QH: tl.constexpr, QW: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   NPOW: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, OFF64: tl.constexpr,
                   DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    # power-of-two tiles only (plan): padding its query tiles gains ~2% of the work at 480p and
    # spills registers in this kernel
    tl.static_assert(QT * QH * QW == BLOCK_M)
    tl.static_assert(KT * KH * KW == BLOCK_N)
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    it, ih, iw, gt, gh, gw = _outer_tile(pid, NT_T, NT_H, NT_W, DT, DH, DW)
    n_t = _group_size(LT, DT, gt)
    n_h = _group_size(LH, DH, gh)
    n_w = _group_size(LW, DW, gw)
    y0_t, y0_h, y0_w = it * KT, ih * KH, iw * KW

    # key rows of this program (padding rows clamped: computed, never stored)
    yt, yh, yw = _box(y0_t, y0_h, y0_w, KT, KH, KW, BLOCK_N)
    key_ok = (yt < n_t) & (yh < n_h) & (yw < n_w)
    yt = tl.minimum(yt, n_t - 1)
    yh = tl.minimum(yh, n_h - 1)
    yw = tl.minimum(yw, n_w - 1)
    tok_k = _token(yt, yh, yw, gt, gh, gw, DT, DH, DW, LH, LW, OFF64)

    y1_t, qlo_t, qhi_t, c_t = _key_span(y0_t, n_t, KS_T, ST_T, KT, QT, CAUSAL_T, NPOW)
    y1_h, qlo_h, qhi_h, c_h = _key_span(y0_h, n_h, KS_H, ST_H, KH, QH, CAUSAL_H, NPOW)
    y1_w, qlo_w, qhi_w, c_w = _key_span(y0_w, n_w, KS_W, ST_W, KW, QW, CAUSAL_W, NPOW)
    n_iter = tl.where((y0_t < n_t) & (y0_h < n_h) & (y0_w < n_w), c_t * c_h * c_w, 0)

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    key_mask = key_ok[:, None] & d_ok[None, :]
    k = _load_rows(K + b * skb + h * skh, tok_k, sks, offs_d, D, EVEN_D)
    v = _load_rows(V + b * svb + h * svh, tok_k, svs, offs_d, D, EVEN_D)
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdob + h * sdoh
    row_base = bh.to(tl.int64) * S

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for j in range(0, n_iter):
        jw = j % c_w
        jh = (j // c_w) % c_h
        jt = j // (c_w * c_h)
        x0_t, x0_h, x0_w = qlo_t + jt * QT, qlo_h + jh * QH, qlo_w + jw * QW
        xt, xh, xw = _box(x0_t, x0_h, x0_w, QT, QH, QW, BLOCK_M)
        q_ok = (xt <= qhi_t) & (xh <= qhi_h) & (xw <= qhi_w)
        xt = tl.minimum(xt, qhi_t)
        xh = tl.minimum(xh, qhi_h)
        xw = tl.minimum(xw, qhi_w)
        tok_q = _token(xt, xh, xw, gt, gh, gw, DT, DH, DW, LH, LW, OFF64)
        q = _load_rows(q_base, tok_q, sqs, offs_d, D, EVEN_D)
        do = _load_rows(do_base, tok_q, sdos, offs_d, D, EVEN_D)
        lse2 = tl.load(LSE + row_base + tok_q) * _LOG2E
        delta = tl.load(DELTA + row_base + tok_q)

        s_t = _mm(k, tl.trans(q), None, DOT_PREC, UPCAST) * qk_scale        # [keys, queries]
        # unmasked only if every query row is real and every real key is in every row's window
        x1_t, x1_h, x1_w = x0_t + QT - 1, x0_h + QH - 1, x0_w + QW - 1
        full = ((x1_t <= qhi_t) & (x1_h <= qhi_h) & (x1_w <= qhi_w)
                & (_win_start(x1_t, n_t, KS_T, ST_T, CAUSAL_T) <= y0_t) & (y1_t <= _win_end(x0_t, n_t, KS_T, ST_T, CAUSAL_T))
                & (_win_start(x1_h, n_h, KS_H, ST_H, CAUSAL_H) <= y0_h) & (y1_h <= _win_end(x0_h, n_h, KS_H, ST_H, CAUSAL_H))
                & (_win_start(x1_w, n_w, KS_W, ST_W, CAUSAL_W) <= y0_w) & (y1_w <= _win_end(x0_w, n_w, KS_W, ST_W, CAUSAL_W)))
        if full == 0:
            inside = _in_window(yt, yh, yw, xt, xh, xw, n_t, n_h, n_w, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W,
                                CAUSAL_T, CAUSAL_H, CAUSAL_W, True) & q_ok[None, :]
            s_t = tl.where(inside, s_t, _MASKED)
        p_t = tl.math.exp2(s_t - lse2[None, :])
        dv = _mm(p_t.to(do.dtype), do, dv, DOT_PREC, UPCAST)
        dp_t = _mm(v, tl.trans(do), None, DOT_PREC, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = _mm(ds_t.to(q.dtype), q, dk, DOT_PREC, UPCAST)

    dk = dk * sm_scale
    tl.store(DK + b * sdkb + h * sdkh + tok_k[:, None] * sdks + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=key_mask)
    tl.store(DV + b * sdvb + h * sdvh + tok_k[:, None] * sdvs + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=key_mask)


# ---------------------------------------------------------------------------------------------
# forward-mode JVP from the forward's results: with P = exp(S − lse) exact (no online rescaling),
# tS = (tQ·Kᵀ + Q·tKᵀ)·scale, r = Σ P ⊙ tS = t_lse, tO = P·tV + (P ⊙ tS)·V − r·O
# ---------------------------------------------------------------------------------------------
@triton.jit
def _na3d_jvp(Q, K, V, TQ, TK, TV, O, LSE, TO, TLSE,
              sqb, sqs, sqh, skb, sks, skh, svb, svs, svh,
              stqb, stqs, stqh, stkb, stks, stkh, stvb, stvs, stvh, sob, sos, soh, stob, stos, stoh,
              HEADS, S, D,
              LT, LH, LW, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W, DT, DH, DW,
              NT_T, NT_H, NT_W, qk_scale, sm_scale,
              CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr,
              QT: tl.constexpr, QH: tl.constexpr, QW: tl.constexpr,
              KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, OFF64: tl.constexpr, DOT_PREC: tl.constexpr,
              UPCAST: tl.constexpr):
    PAD_N: tl.constexpr = KT * KH * KW < BLOCK_N
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    it, ih, iw, gt, gh, gw = _outer_tile(pid, NT_T, NT_H, NT_W, DT, DH, DW)
    n_t = _group_size(LT, DT, gt)
    n_h = _group_size(LH, DH, gh)
    n_w = _group_size(LW, DW, gw)
    x0_t, x0_h, x0_w = it * QT, ih * QH, iw * QW

    xt, xh, xw = _box(x0_t, x0_h, x0_w, QT, QH, QW, BLOCK_M)
    row_ok = (xt < n_t) & (xh < n_h) & (xw < n_w) & _box_rows(QT, QH, QW, BLOCK_M)
    xt = tl.minimum(xt, n_t - 1)
    xh = tl.minimum(xh, n_h - 1)
    xw = tl.minimum(xw, n_w - 1)
    tok_q = _token(xt, xh, xw, gt, gh, gw, DT, DH, DW, LH, LW, OFF64)

    u_lo_t, u_hi_t, c_t, in_lo_t, in_hi_t = _query_span(x0_t, n_t, KS_T, ST_T, QT, KT, CAUSAL_T)
    u_lo_h, u_hi_h, c_h, in_lo_h, in_hi_h = _query_span(x0_h, n_h, KS_H, ST_H, QH, KH, CAUSAL_H)
    u_lo_w, u_hi_w, c_w, in_lo_w, in_hi_w = _query_span(x0_w, n_w, KS_W, ST_W, QW, KW, CAUSAL_W)
    n_iter = tl.where((x0_t < n_t) & (x0_h < n_h) & (x0_w < n_w), c_t * c_h * c_w, 0)

    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * sqb + h * sqh, tok_q, sqs, offs_d, D, EVEN_D)
    tq = _load_rows(TQ + b * stqb + h * stqh, tok_q, stqs, offs_d, D, EVEN_D)
    lse2 = tl.load(LSE + bh.to(tl.int64) * S + tok_q) * _LOG2E
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    tk_base = TK + b * stkb + h * stkh
    tv_base = TV + b * stvb + h * stvh

    r = tl.zeros([BLOCK_M], tl.float32)                 # Σ P ⊙ tS
    acc_t = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)    # P·tV + (P ⊙ tS)·V
    for j in range(0, n_iter):
        jw = j % c_w
        jh = (j // c_w) % c_h
        jt = j // (c_w * c_h)
        y0_t, y0_h, y0_w = u_lo_t + jt * KT, u_lo_h + jh * KH, u_lo_w + jw * KW
        yt, yh, yw = _box(y0_t, y0_h, y0_w, KT, KH, KW, BLOCK_N)
        tok_k = _token(tl.minimum(yt, u_hi_t), tl.minimum(yh, u_hi_h), tl.minimum(yw, u_hi_w),
                       gt, gh, gw, DT, DH, DW, LH, LW, OFF64)
        # ordered so that few [BLOCK_M, BLOCK_N] tiles are live at once (registers)
        k = _load_rows(k_base, tok_k, sks, offs_d, D, EVEN_D)
        s = _mm(q, tl.trans(k), None, DOT_PREC, UPCAST) * qk_scale
        partial = ((y0_t < in_lo_t) | (y0_t + KT - 1 > in_hi_t) | (y0_h < in_lo_h) | (y0_h + KH - 1 > in_hi_h)
                   | (y0_w < in_lo_w) | (y0_w + KW - 1 > in_hi_w))
        if partial:
            s = tl.where(_in_window(yt, yh, yw, xt, xh, xw, n_t, n_h, n_w, KS_T, KS_H, KS_W, ST_T, ST_H, ST_W,
                                     CAUSAL_T, CAUSAL_H, CAUSAL_W, False), s, _MASKED)
        if PAD_N:  # padding keys (a tile smaller than its block) never count
            s = tl.where(_box_rows(KT, KH, KW, BLOCK_N)[None, :], s, _MASKED)
        p = tl.math.exp2(s - lse2[:, None])
        tk = _load_rows(tk_base, tok_k, stks, offs_d, D, EVEN_D)
        ts = _mm(tq, tl.trans(k), None, DOT_PREC, UPCAST)
        ts = _mm(q, tl.trans(tk), ts, DOT_PREC, UPCAST)
        pts = p * ts * sm_scale
        r += tl.sum(pts, 1)
        v = _load_rows(v_base, tok_k, svs, offs_d, D, EVEN_D)
        tv = _load_rows(tv_base, tok_k, stvs, offs_d, D, EVEN_D)
        acc_t = _mm(p.to(v.dtype), tv, acc_t, DOT_PREC, UPCAST)
        acc_t = _mm(pts.to(v.dtype), v, acc_t, DOT_PREC, UPCAST)

    o = _load_rows(O + b * sob + h * soh, tok_q, sos, offs_d, D, EVEN_D).to(tl.float32)
    t_out = acc_t - r[:, None] * o
    store_mask = row_ok[:, None] & (offs_d < D)[None, :]
    tl.store(TO + b * stob + h * stoh + tok_q[:, None] * stos + offs_d[None, :], t_out.to(TO.dtype.element_ty),
             mask=store_mask)
    tl.store(TLSE + bh.to(tl.int64) * S + tok_q, r, mask=row_ok)


# ---------------------------------------------------------------------------------------------
# host side: geometry, tile planning, launch configurations, launchers
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """A neighborhood on a token grid: 3-tuples per axis (t, h, w)."""
    grid: tuple
    kernel_size: tuple
    dilation: tuple
    stride: tuple
    is_causal: tuple

    def group_extent(self, axis: int) -> int:
        """Positions in the largest dilation group along `axis`."""
        return -(-self.grid[axis] // self.dilation[axis])


@dataclass(frozen=True)
class LaunchConfig:
    block_outer: int   # positions in a program's own tile (queries; keys for dk/dv)
    block_inner: int   # positions in the tiles it walks
    num_warps: int
    num_stages: int


# H100 configurations (untuned on hardware: no GPU was available when they were written; they are
# the usual FlashAttention-2-in-Triton choices for D=128, checked spill-free by the AOT report).
# jvp: one warpgroup (4 warps) per 64-row tile; with 8 warps it sat at the 255-register cap at 720p
# and spilled at 480p (16-24 B), with 4 it uses 221 / 240 registers and no spill.
GPU_CONFIGS = {
    "fwd": LaunchConfig(128, 64, 8, 3),
    "dq": LaunchConfig(64, 64, 4, 3),
    "dkdv": LaunchConfig(64, 64, 8, 2),
    "jvp": LaunchConfig(64, 64, 4, 2),
}
# the interpreter: the smallest tiles tl.dot takes, so small test grids still span many tiles
INTERPRETER_CONFIG = LaunchConfig(16, 16, 4, 1)


def launch_config(kernel: str, device: torch.device) -> LaunchConfig:
    return GPU_CONFIGS[kernel] if device.type == "cuda" else INTERPRETER_CONFIG


@dataclass(frozen=True)
class TilePlan:
    outer_tile: tuple    # (t, h, w) tile shape of a program's own tokens
    inner_tile: tuple    # (t, h, w) tile shape of the tiles it walks
    tiles: tuple         # outer tiles per axis per dilation group (the largest group)
    programs: int        # programs per (batch, head), dilation groups included
    visits: int          # inner tiles visited per (batch, head), summed over programs
    masked: int          # of which partially covered (masked in the kernel)


def _pow2_shapes(block: int):
    """(t, h, w) powers of two with product `block`, wide-w first (contiguous runs of tokens)."""
    e = int(math.log2(block))
    return [(1 << a, 1 << b, 1 << (e - a - b)) for a in range(e + 1) for b in range(e - a + 1)]


def _axis_sizes(extent: int, stride: int) -> list[int]:
    """Tile sizes worth trying along an axis besides powers of two: the axis extent itself and,
    for a stride that is not a power of two, its multiples up to the extent (a tile of whole
    stride groups shares its windows: stride 3 or 5 at 480p). Stride 1 or a power of two adds
    no multiples: the power-of-two sides already align with it, and every size would make the
    search (host time at the first launch of a geometry) ~100x longer."""
    multiples = range(stride, extent + 1, stride) if stride & (stride - 1) else ()
    return sorted({*multiples, extent})


def tile_shapes(block: int, geom: Geometry) -> list[tuple[int, int, int]]:
    """Candidate (t, h, w) tiles for `block` rows: the power-of-two boxes that fill it first (so
    they win ties), then boxes of more than half of it built from _axis_sizes, padded to `block`
    in the kernels (the padding rows are masked)."""
    exact = _pow2_shapes(block)
    per_axis = [sorted(set(_axis_sizes(geom.group_extent(ax), geom.stride[ax]))
                       | {1 << e for e in range(int(math.log2(block)) + 1)}) for ax in range(3)]
    padded = [s for s in itertools.product(*per_axis)
              if block // 2 < math.prod(s) < block and s not in exact]
    return exact + padded


@lru_cache(maxsize=1024)
def _axis_visits(length: int, kernel: int, dilation: int, stride: int, causal: bool,
                 outer: int, inner: int, walk_keys: bool) -> tuple[int, int]:
    """(inner tiles visited, of which unmasked) along one axis, summed over dilation groups, exactly
    as the kernels iterate: walk_keys for query-tile programs (fwd, dq, jvp), else key-tile ones."""
    visits = unmasked = 0
    for g in range(dilation):
        n = (length - g + dilation - 1) // dilation
        start, end = (t.tolist() for t in ref.axis_window(torch.arange(n), n, kernel, stride, causal))
        for c0 in range(0, n, outer):
            c1 = min(c0 + outer - 1, n - 1)
            if walk_keys:  # key tiles from the union's start; unmasked inside [start(c1), end(c0)]
                lo, count = start[c0], -(-(end[c1] - start[c0] + 1) // inner)
                unmasked += sum(lo + j * inner >= start[c1] and lo + (j + 1) * inner - 1 <= end[c0]
                                for j in range(count))
            else:  # query tiles over the queries whose windows reach keys [c0, c1] (monotone windows)
                x_lo, x_hi = bisect_left(end, c0), bisect_right(start, c1) - 1
                count = -(-max(0, x_hi - x_lo + 1) // inner)
                unmasked += sum(x + inner - 1 <= x_hi and start[x + inner - 1] <= c0 and c1 <= end[x]
                                for x in range(x_lo, x_lo + count * inner, inner))
            visits += count
    return visits, unmasked


PADDED_TILES_ENV = "COSMOS_KERNELS_NATTEN_PADDED_TILES"


def padded_tiles() -> bool:
    """Whether the query-tile kernels may take padded tiles (COSMOS_KERNELS_NATTEN_PADDED_TILES=1).
    Opt-in: fewer tile visits is counted exactly, but no GPU has yet timed the padded kernels
    against the power-of-two ones (bench rows ours:triton:padded-tiles)."""
    return os.environ.get(PADDED_TILES_ENV, "0") == "1"


def plan(geom: Geometry, block_outer: int, block_inner: int, walk_keys: bool, padded: bool | None = None) -> TilePlan:
    """_plan over power-of-two boxes (the default), or with padded=True (default: padded_tiles())
    over every candidate tile for the query-tile programs (fwd, dq, jvp); dk/dv always keeps
    power-of-two boxes (padding gains it ~2% at 480p and spills registers there)."""
    padded = padded_tiles() if padded is None else padded
    return _plan(geom, block_outer, block_inner, walk_keys, padded and walk_keys)


@lru_cache(maxsize=256)
def _plan(geom: Geometry, block_outer: int, block_inner: int, walk_keys: bool, padded: bool) -> TilePlan:
    """The outer/inner tile shapes with the fewest visited inner tiles (the work is
    visits × block_outer × block_inner, padding included), then the fewest masked ones; both
    factorise over axes. Tiles may be smaller than their blocks (tile_shapes): with a window
    stride that is not a power of two, whole stride groups (e.g. 8×3×5 of 128 rows at 480p)
    visit fewer key tiles than any power-of-two box."""
    best = None
    shapes = tile_shapes if padded else (lambda block, _: _pow2_shapes(block))
    for o, i in itertools.product(shapes(block_outer, geom), shapes(block_inner, geom)):
        per_axis = [_axis_visits(geom.grid[ax], geom.kernel_size[ax], geom.dilation[ax], geom.stride[ax],
                                 geom.is_causal[ax], o[ax], i[ax], walk_keys) for ax in range(3)]
        visits = math.prod(v for v, _ in per_axis)
        masked = visits - math.prod(u for _, u in per_axis)
        if best is None or (visits, masked) < best[:2]:
            best = (visits, masked, o, i)
    visits, masked, o, i = best
    tiles = tuple(-(-geom.group_extent(ax) // o[ax]) for ax in range(3))
    return TilePlan(o, i, tiles, math.prod(tiles) * math.prod(geom.dilation), visits, masked)


@dataclass
class Launch:
    """One kernel launch: the same description runs it and feeds the compile report."""
    name: str
    fn: object
    grid: tuple
    args: dict          # runtime arguments by name (tensors, ints, floats), in kernel order
    constexprs: dict
    cfg: LaunchConfig

    def __post_init__(self):
        runtime = [n for n in self.fn.arg_names if n not in self.constexprs]
        assert list(self.args) == runtime, f"{self.name}: arguments {list(self.args)} != kernel's {runtime}"

    def run(self):
        self.fn[self.grid](*self.args.values(), **self.constexprs, num_warps=self.cfg.num_warps,
                           num_stages=self.cfg.num_stages)

    def aot_spec(self, label: str) -> AotSpec:
        """As the launcher specialises it: ints equal to 1 become constants, pointers and
        multiples of 16 are marked divisible by 16."""
        signature, constexprs, aligned = {}, dict(self.constexprs), []
        for name, value in self.args.items():
            if isinstance(value, torch.Tensor):
                signature[name] = "*" + _TRITON_DTYPES[value.dtype]
                aligned.append(name)
            elif isinstance(value, float):
                signature[name] = "fp32"
            elif value == 1:
                constexprs[name] = 1
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    aligned.append(name)
        signature.update({name: "constexpr" for name in constexprs})
        return AotSpec(f"neighborhood_attention_{self.name}[{label}]", self.fn, signature, constexprs,
                       num_warps=self.cfg.num_warps, num_stages=self.cfg.num_stages,
                       expect_wgmma=self.name != "bwd_delta", aligned=tuple(aligned))


INT32_OFFSETS = 2 ** 31  # token offsets at or past this use the int64 kernel variant (OFF64)
_TRITON_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32"}


def _named(prefix: str, names: str, values) -> dict:
    return {f"{prefix}{n}": v for n, v in zip(names.split(), values)}


def _tensor_args(**tensors) -> dict:
    """Pointer then (batch, token, head) strides of each tensor, named as the kernels name them."""
    out = {}
    for name, t in tensors.items():
        out[name] = t
    for name, t in tensors.items():
        if t.dim() == 4:
            out.update(_named(f"s{name.lower()}", "b s h", t.stride()[:3]))
    return out


def _common(geom: Geometry, p: TilePlan, walk_keys: bool, cfg: LaunchConfig, q: torch.Tensor,
            *ts: torch.Tensor) -> tuple[dict, dict]:
    """Runtime geometry arguments and the constexprs every attention kernel takes."""
    B, S, H, D = q.shape
    args = dict(HEADS=H, S=S, D=D, **_named("L", "T H W", geom.grid), **_named("KS_", "T H W", geom.kernel_size),
                **_named("ST_", "T H W", geom.stride), **_named("D", "T H W", geom.dilation),
                **_named("NT_", "T H W", p.tiles))
    q_tile, k_tile = (p.outer_tile, p.inner_tile) if walk_keys else (p.inner_tile, p.outer_tile)
    q_rows, k_rows = (cfg.block_outer, cfg.block_inner) if walk_keys else (cfg.block_inner, cfg.block_outer)
    block_d = max(16, triton.next_power_of_2(D))
    # int32 row offsets (tok * stride) unless some tensor's token offsets can pass 2**31
    off64 = any(t.shape[1] * max(t.stride(1), 1) + t.shape[2] * t.stride(2) >= INT32_OFFSETS for t in (q, *ts))
    const = dict(**_named("CAUSAL_", "T H W", (bool(c) for c in geom.is_causal)), **_named("Q", "T H W", q_tile),
                 **_named("K", "T H W", k_tile), BLOCK_M=q_rows, BLOCK_N=k_rows, BLOCK_D=block_d, EVEN_D=block_d == D, OFF64=off64,
                 # fp32 inputs keep fp32 accuracy; 16-bit inputs ignore the precision
                 DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
                 # the interpreter's tl.dot misreads bf16 operands: multiply the same values in fp32
                 UPCAST=q.device.type == "cpu" and q.dtype == torch.bfloat16)
    return args, const


def _unit_last(*ts: torch.Tensor):
    """The kernels address D with unit stride (gradients of a sum() are expanded: stride 0)."""
    return [t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous() for t in ts]


def _ordered(fn, args: dict) -> dict:
    """`args` in the kernel's parameter order (the launch passes them positionally)."""
    return {name: args[name] for name in fn.arg_names if name in args}


def fwd_launch(q, k, v, out, lse, geom: Geometry, scale: float, cfg: LaunchConfig, visits=None,
               padded: bool | None = None) -> Launch:
    p = plan(geom, cfg.block_outer, cfg.block_inner, True, padded)
    args, const = _common(geom, p, True, cfg, q, k, v, out)
    args.update(_tensor_args(Q=q, K=k, V=v, O=out), LSE=lse, VISITS=visits if visits is not None else lse,
                qk_scale=scale * LOG2E)
    const["COUNT_VISITS"] = visits is not None
    return Launch("fwd", _na3d_fwd, (p.programs, q.shape[0] * q.shape[2]), _ordered(_na3d_fwd, args), const, cfg)


def delta_launch(out, grad_out, grad_lse, delta) -> Launch:
    B, S, H, D = out.shape
    args = dict(_tensor_args(O=out, DO=grad_out), DLSE=grad_lse if grad_lse is not None else delta, DELTA=delta,
                HEADS=H, S=S, D=D)
    const = dict(HAS_DLSE=grad_lse is not None, BLOCK_S=64, BLOCK_D=max(16, triton.next_power_of_2(D)))
    return Launch("bwd_delta", _na3d_bwd_delta, (triton.cdiv(S, 64), B * H), _ordered(_na3d_bwd_delta, args), const,
                  LaunchConfig(64, 1, 4, 1))


def dq_launch(q, k, v, grad_out, lse, delta, dq, geom: Geometry, scale: float, cfg: LaunchConfig,
              padded: bool | None = None) -> Launch:
    p = plan(geom, cfg.block_outer, cfg.block_inner, True, padded)
    args, const = _common(geom, p, True, cfg, q, k, v, grad_out, dq)
    args.update(_tensor_args(Q=q, K=k, V=v, DO=grad_out, DQ=dq), LSE=lse, DELTA=delta, qk_scale=scale * LOG2E,
                sm_scale=scale)
    return Launch("bwd_dq", _na3d_bwd_dq, (p.programs, q.shape[0] * q.shape[2]), _ordered(_na3d_bwd_dq, args), const,
                  cfg)


def dkdv_launch(q, k, v, grad_out, lse, delta, dk, dv, geom: Geometry, scale: float, cfg: LaunchConfig) -> Launch:
    p = plan(geom, cfg.block_outer, cfg.block_inner, False)
    args, const = _common(geom, p, False, cfg, q, k, v, grad_out, dk, dv)
    args.update(_tensor_args(Q=q, K=k, V=v, DO=grad_out, DK=dk, DV=dv), LSE=lse, DELTA=delta,
                qk_scale=scale * LOG2E, sm_scale=scale)
    const["NPOW"] = triton.next_power_of_2(max(geom.group_extent(ax) for ax in range(3)))
    return Launch("bwd_dkdv", _na3d_bwd_dkdv, (p.programs, q.shape[0] * q.shape[2]), _ordered(_na3d_bwd_dkdv, args),
                  const, cfg)


def jvp_launch(q, k, v, tq, tk, tv, out, lse, t_out, t_lse, geom: Geometry, scale: float, cfg: LaunchConfig,
               padded: bool | None = None) -> Launch:
    p = plan(geom, cfg.block_outer, cfg.block_inner, True, padded)
    args, const = _common(geom, p, True, cfg, q, k, v, tq, tk, tv, out, t_out)
    args.update(_tensor_args(Q=q, K=k, V=v, TQ=tq, TK=tk, TV=tv, O=out, TO=t_out), LSE=lse, TLSE=t_lse,
                qk_scale=scale * LOG2E, sm_scale=scale)
    return Launch("jvp", _na3d_jvp, (p.programs, q.shape[0] * q.shape[2]), _ordered(_na3d_jvp, args), const, cfg)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: Geometry, scale: float,
            visits: torch.Tensor | None = None):
    """(out, lse (B, heads, S) fp32). `visits` (int32, 2 × programs), for tests of the tile
    skipping, receives the key tiles each query-tile program walked, then how many were masked."""
    q, k, v = _unit_last(q, k, v)
    B, S, H, D = q.shape
    out = _alloc.empty_like(q)
    lse = _alloc.empty(B, H, S, dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return out, lse
    fwd_launch(q, k, v, out, lse, geom, scale, launch_config("fwd", q.device), visits).run()
    return out, lse


def backward(grad_out, grad_lse, q, k, v, out, lse, geom: Geometry, scale: float):
    """(dq, dk, dv): delta = rowsum(dO ⊙ O) − dlse, then the dq and the dk/dv kernels."""
    grad_out, q, k, v, out = _unit_last(grad_out, q, k, v, out)
    lse = lse.contiguous()
    B, S, H, D = q.shape
    if q.numel() == 0:
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = _alloc.empty(B, H, S, dtype=torch.float32, device=q.device)
    grad_lse = grad_lse.contiguous() if grad_lse is not None else None
    delta_launch(out, grad_out, grad_lse, delta).run()
    dq = _alloc.empty_like(q)
    dq_launch(q, k, v, grad_out, lse, delta, dq, geom, scale, launch_config("dq", q.device)).run()
    dk, dv = _alloc.empty_like(k), _alloc.empty_like(v)
    dkdv_launch(q, k, v, grad_out, lse, delta, dk, dv, geom, scale, launch_config("dkdv", q.device)).run()
    return dq, dk, dv


def jvp(q, k, v, tq, tk, tv, out, lse, geom: Geometry, scale: float):
    """(t_out, t_lse (B, heads, S) fp32) from the forward's out and lse, in one pass."""
    q, k, v, tq, tk, tv, out = _unit_last(q, k, v, tq, tk, tv, out)
    lse = lse.contiguous()
    B, S, H, D = q.shape
    t_out = _alloc.empty_like(q)
    t_lse = _alloc.empty(B, H, S, dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return t_out, t_lse
    jvp_launch(q, k, v, tq, tk, tv, out, lse, t_out, t_lse, geom, scale, launch_config("jvp", q.device)).run()
    return t_out, t_lse


# ---------------------------------------------------------------------------------------------
# compile report: the launches at the paper's 720p grid with the official window (and its 480p
# scaling), 16 heads, built by the launchers above from meta tensors
# ---------------------------------------------------------------------------------------------
def _aot_specs() -> list[AotSpec]:
    official = Geometry((24, 44, 80), (24, 12, 24), (1, 1, 1), (1, 4, 8), (False, False, False))
    scaled_480p = Geometry((24, 30, 52), (24, 8, 16), (1, 1, 1), (1, 3, 5), (False, False, False))
    specs = []
    for dtype, D, geom in [(torch.bfloat16, 128, official), (torch.float16, 128, official),
                           (torch.bfloat16, 64, official), (torch.bfloat16, 128, scaled_480p)]:
        S, H = math.prod(geom.grid), 16
        q, k, v, o, do, tq, tk, tv = (torch.empty(1, S, H, D, dtype=dtype, device="meta") for _ in range(8))
        rows = torch.empty(1, H, S, dtype=torch.float32, device="meta")
        label = f"{_TRITON_DTYPES[dtype]},D={D},{'x'.join(map(str, geom.grid))}"
        # every attention kernel at both grids; at 480p (stride (1, 3, 5)) also the opt-in plan's
        # padded tiles of whole stride groups; the delta kernel does not depend on the window
        launches = [fwd_launch(q, k, v, o, rows, geom, 0.1, GPU_CONFIGS["fwd"]),
                    dq_launch(q, k, v, do, rows, rows, q, geom, 0.1, GPU_CONFIGS["dq"]),
                    dkdv_launch(q, k, v, do, rows, rows, k, v, geom, 0.1, GPU_CONFIGS["dkdv"]),
                    jvp_launch(q, k, v, tq, tk, tv, o, rows, o, rows, geom, 0.1, GPU_CONFIGS["jvp"])]
        if geom is official:
            launches.append(delta_launch(o, do, rows, rows))
        else:
            specs += [launch.aot_spec(label + ",padded") for launch in (
                fwd_launch(q, k, v, o, rows, geom, 0.1, GPU_CONFIGS["fwd"], padded=True),
                dq_launch(q, k, v, do, rows, rows, q, geom, 0.1, GPU_CONFIGS["dq"], padded=True),
                jvp_launch(q, k, v, tq, tk, tv, o, rows, o, rows, geom, 0.1, GPU_CONFIGS["jvp"], padded=True))]
        specs += [launch.aot_spec(label) for launch in launches]
    return specs


AOT_SPECS = _aot_specs()
