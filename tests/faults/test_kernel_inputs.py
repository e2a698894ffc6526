"""Property test over kernel inputs (hypothesis): random shapes inside and just outside each op's
limits, strided views, dtypes, devices and scalar arguments. Every call either matches the
reference (finite, within the dtype's threshold) or raises the documented error: a TypeError or
ValueError whose message starts with the op's name and names the argument at fault. Anything else
(a Triton or C++ crash, an IndexError, a NaN output, a silently wrong result) fails.

The examples are derandomized (the same ones every CI run); COSMOS_HYPOTHESIS_EXAMPLES=500 explores
more locally."""
import os

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import testing
from cosmos_kernels.reference import adaln as ref_adaln
from cosmos_kernels.reference import flash_attention as ref_fa
from cosmos_kernels.reference import neighborhood_attention as ref_na
from cosmos_kernels.reference import rope as ref_rope
from tests.helpers import runnable_backends

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("COSMOS_HYPOTHESIS_EXAMPLES", "30"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLOATS = [torch.float32, torch.bfloat16, torch.float16]
# input faults every op is tried with: (kind, the argument it hits is drawn per op)
FAULTS = ["none", "none", "none", "strided", "ndim", "shape", "int_dtype", "mixed_dtype", "last_stride", "device",
          "empty", "scalar"]


class Expect:
    """What a case must do: match `reference()` when `blame` is empty, else raise naming one of
    `blame` (an input with two faults may be refused for either)."""

    def __init__(self, op, call, reference, blame, long_reduction=False):
        self.op, self.call, self.reference, self.blame = op, call, reference, [b for b in blame if b]
        self.long_reduction = long_reduction


def _tensor(shape, dtype, *, strided=False):
    if strided:  # a view whose inner dims are not contiguous (every last dim still is)
        base = torch.randn(*shape[:-2], shape[-2] * 2, shape[-1]).to(dtype)
        return base[..., ::2, :]
    return torch.randn(*shape).to(dtype) if dtype.is_floating_point else torch.randint(-3, 3, shape, dtype=dtype)


def _faulty(kind, name, shape, dtype, dim=1):
    """The tensor `name` with fault `kind` (None: no tensor fault of this kind for it); "shape" adds
    one to dimension `dim` (the sequence of (B, S, H, D) and (B, L, D) tensors)."""
    if kind == "ndim":
        return torch.randn(*shape, 1).to(dtype)
    if kind == "shape":
        shape = list(shape)
        shape[dim] += 1
        return torch.randn(*shape).to(dtype)
    if kind == "int_dtype":
        return torch.randint(-3, 3, shape, dtype=torch.int32)
    if kind == "mixed_dtype":
        other = torch.float16 if dtype != torch.float16 else torch.float32
        return torch.randn(*shape).to(other)
    if kind == "last_stride":
        return torch.randn(*shape[:-1], shape[-1] * 2).to(dtype)[..., ::2]
    if kind == "device":
        return torch.empty(shape, dtype=dtype, device="meta")
    return None


def _check(expect: Expect, dtype):
    try:
        out = expect.call()
    except (TypeError, ValueError) as exc:
        message = str(exc)
        assert expect.blame, f"valid input refused: {type(exc).__name__}: {message}"
        assert message.startswith(expect.op), f"the message does not name the op: {message}"
        assert any(b in message for b in expect.blame), f"the message names none of {expect.blame}: {message}"
        return "refused"
    assert not expect.blame, f"bad input accepted (expected an error naming one of {expect.blame})"
    outs = out if isinstance(out, tuple) else (out,)
    refs = expect.reference()
    refs = refs if isinstance(refs, tuple) else (refs,)
    for o, r in zip(outs, refs):
        testing.assert_close(o, r.to(o.dtype), dtype, long_reduction=expect.long_reduction)
    return "matched"


def _backend_refuses_dtype(backend, dtype):
    return backend != "torch" and dtype == torch.float64


# ----------------------------------------------------------------------------- attention
@SETTINGS
@given(data=st.data())
def test_flash_attention_matches_or_refuses(data):
    op = "flash_attention"
    backend = data.draw(st.sampled_from(runnable_backends(op)), "backend")
    dtype = data.draw(st.sampled_from(FLOATS + [torch.float64]), "dtype")
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    S_q, S_k = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    D = data.draw(st.sampled_from([16, 32, 64, 8, 24, 272]), "D")  # the last three outside the limits
    kind = data.draw(st.sampled_from(FAULTS), "fault")
    target = data.draw(st.sampled_from(["q", "k", "v"]), "target")
    args = {name: _tensor((B, S_q if name == "q" else S_k, H, D), dtype, strided=kind == "strided")
            for name in ("q", "k", "v")}
    scale, blame = None, []
    faulty = _faulty(kind, target, tuple(args[target].shape), dtype)
    if faulty is not None:
        args[target] = faulty
        if kind in ("mixed_dtype", "device"):
            blame.append("k" if target == "q" else target)  # the first one that differs from q is named
        elif kind == "shape":  # another S_q is still a valid input; k and v must agree
            blame.append(None if target == "q" else "v")
        else:
            blame.append(target)
    elif kind == "empty":
        args["q"] = torch.randn(B, 0, H, D).to(dtype)
        blame.append("empty")
    elif kind == "scalar":
        scale = data.draw(st.sampled_from([float("inf"), float("nan"), True, "0.1"]))
        blame.append("softmax_scale")
    if D not in (16, 32, 64):
        blame.append("head dim")
    if _backend_refuses_dtype(backend, dtype):
        blame.append("dtype")

    def call():
        return ck.flash_attention(args["q"], args["k"], args["v"], scale, backend=backend)

    def reference():
        return ref_fa.attention(args["q"], args["k"], args["v"], scale)

    _check(Expect(op, call, reference, blame, long_reduction=True), dtype)


@SETTINGS
@given(data=st.data())
def test_neighborhood_attention_matches_or_refuses(data):
    op = "neighborhood_attention_3d"
    backend = data.draw(st.sampled_from(runnable_backends(op)), "backend")
    dtype = data.draw(st.sampled_from(FLOATS), "dtype")
    grid = tuple(data.draw(st.integers(1, 4)) for _ in range(3))
    kernel = tuple(data.draw(st.integers(1, g + 1)) for g in grid)   # may exceed the grid by one
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(3))
    stride = tuple(data.draw(st.integers(1, k + 1)) for k in kernel)  # may exceed the kernel by one
    causal = tuple(data.draw(st.booleans()) for _ in range(3))
    D = data.draw(st.sampled_from([16, 32, 64]))
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    S = grid[0] * grid[1] * grid[2]
    kind = data.draw(st.sampled_from(FAULTS), "fault")
    target = data.draw(st.sampled_from(["q", "k", "v"]), "target")
    args = {name: _tensor((B, S, H, D), dtype, strided=kind == "strided") for name in ("q", "k", "v")}
    scale, blame = None, []
    if any(kk * d > g for kk, d, g in zip(kernel, dilation, grid)):
        blame.append("kernel_size")
    if any(st_ > kk for st_, kk in zip(stride, kernel)):
        blame.append("stride")
    faulty = _faulty(kind, target, (B, S, H, D), dtype)
    if faulty is not None:
        args[target] = faulty
        blame.append("k" if kind in ("mixed_dtype", "device") and target == "q" else target)
    elif kind == "scalar":
        scale = data.draw(st.sampled_from([float("inf"), -1.0, 0.0, False]))
        blame.append("softmax_scale")
    elif kind == "empty":
        args = {name: torch.randn(B, S, H, 0).to(dtype) for name in ("q", "k", "v")}
        blame.append("q")

    def call():
        return ck.neighborhood_attention_3d(args["q"], args["k"], args["v"], grid, kernel, dilation, stride, causal,
                                            scale, backend=backend)

    def reference():
        out, _ = ref_na.neighborhood_attention_3d(args["q"], args["k"], args["v"], grid, kernel, dilation, stride,
                                                  causal, scale if scale is not None else D ** -0.5)
        return out

    _check(Expect(op, call, reference, blame, long_reduction=True), dtype)


# ----------------------------------------------------------------------------- AdaLN, RoPE
@SETTINGS
@given(data=st.data())
def test_adaln_modulate_matches_or_refuses(data):
    op = "adaln_modulate"
    backend = data.draw(st.sampled_from(runnable_backends(op)), "backend")
    dtype = data.draw(st.sampled_from(FLOATS + [torch.float64]), "dtype")
    B, T = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    L = T * data.draw(st.integers(1, 5))
    D = data.draw(st.sampled_from([8, 48, 64, 100]))
    per_frame = data.draw(st.booleans())
    kind = data.draw(st.sampled_from(FAULTS), "fault")
    target = data.draw(st.sampled_from(["x", "shift", "scale"]), "target")
    mod_shape = (B, T, D) if per_frame else (B, D)
    args = {"x": _tensor((B, L, D), dtype, strided=kind == "strided"),
            "shift": torch.randn(*mod_shape).to(dtype), "scale": torch.randn(*mod_shape).to(dtype)}
    eps, blame = 1e-6, []
    faulty = _faulty(kind, target, tuple(args[target].shape), dtype)
    if faulty is not None:
        args[target] = faulty
        if kind == "shape" and target == "x":  # L + 1 tokens: fine unless per-frame rows no longer divide them
            blame.append(None if (L + 1) % T == 0 or not per_frame else "x")
        elif kind == "device" and target == "x":
            blame.append("shift")
        elif kind == "mixed_dtype" and target == "x":  # a float32 modulation is allowed with any x
            blame.append(None if dtype == torch.float32 else "shift")
        else:
            blame.append(target)
    elif kind == "empty":
        args["x"] = torch.randn(B, 0, D).to(dtype)
        blame.append("x")
    elif kind == "scalar":
        eps = data.draw(st.sampled_from([0.0, -1e-6, float("nan"), True]))
        blame.append("eps")
    if _backend_refuses_dtype(backend, dtype):
        blame.append("dtype")

    def call():
        return ck.adaln_modulate(args["x"], args["shift"], args["scale"], eps, backend=backend)

    def reference():
        rows = [m if m.dim() == 3 else m[:, None] for m in (args["shift"], args["scale"])]  # (B, D): one frame
        return ref_adaln.adaln_modulate(args["x"], *rows, eps)

    _check(Expect(op, call, reference, blame), dtype)


@SETTINGS
@given(data=st.data())
def test_apply_rope3d_matches_or_refuses(data):
    op = "apply_rope3d"
    backend = data.draw(st.sampled_from(runnable_backends(op)), "backend")
    dtype = data.draw(st.sampled_from(FLOATS), "dtype")
    grid = tuple(data.draw(st.integers(1, 3)) for _ in range(3))
    D = data.draw(st.sampled_from([12, 16, 64, 128]))
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    S = grid[0] * grid[1] * grid[2]
    kind = data.draw(st.sampled_from(FAULTS), "fault")
    target = data.draw(st.sampled_from(["x", "freqs"]), "target")
    args = {"x": _tensor((B, S, H, D), dtype, strided=kind == "strided"), "freqs": ck.rope3d_freqs(grid, D)}
    blame = []
    if kind == "mixed_dtype":
        target = "x"  # x may have any float dtype (the angles are always fp32): a valid input
    faulty = _faulty(kind, target, tuple(args[target].shape), dtype if target == "x" else torch.float32,
                     dim=1 if target == "x" else 0)
    if faulty is not None:
        args[target] = faulty
        if kind == "shape":  # S + 1 tokens (or angle rows): the table no longer fits
            blame.append("freqs")
        elif kind == "device" and target == "x":
            blame.append("freqs")
        elif kind != "mixed_dtype":
            blame.append(target)
    elif kind == "empty":
        args["x"] = torch.randn(B, S, H, 0).to(dtype)
        blame.append("x")
    elif kind == "scalar":  # float64 angles: the reference takes them, the kernels do not
        args["freqs"] = args["freqs"].double()
        blame.append(None if backend == "torch" else "freqs")

    def call():
        return ck.apply_rope3d(args["x"], args["freqs"], backend=backend)

    def reference():
        return ref_rope.apply_rope3d(args["x"], args["freqs"])

    _check(Expect(op, call, reference, blame), dtype)


@SETTINGS
@given(data=st.data())
def test_qk_norm_rope_matches_or_refuses(data):
    op = "qk_norm_rope"
    backend = data.draw(st.sampled_from(runnable_backends(op)), "backend")
    dtype = data.draw(st.sampled_from(FLOATS), "dtype")
    grid = tuple(data.draw(st.integers(1, 3)) for _ in range(3))
    D = data.draw(st.sampled_from([16, 64]))
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    S = grid[0] * grid[1] * grid[2]
    with_rope = data.draw(st.booleans())
    S_k = S if with_rope else data.draw(st.integers(1, 12))
    kind = data.draw(st.sampled_from(FAULTS), "fault")
    target = data.draw(st.sampled_from(["q", "k"]), "target")
    args = {"q": _tensor((B, S, H, D), dtype, strided=kind == "strided"),
            "k": _tensor((B, S_k, H, D), dtype, strided=kind == "strided"),
            "q_weight": torch.randn(D).to(dtype), "k_weight": torch.randn(D).to(dtype)}
    freqs = ck.rope3d_freqs(grid, D) if with_rope else None
    eps, blame = 1e-6, []
    faulty = _faulty(kind, target, tuple(args[target].shape), dtype)
    if faulty is not None:
        args[target] = faulty
        if kind == "shape":  # without RoPE k may be as long as it likes; with it both must fit the table
            blame.append("freqs" if with_rope else None)
        else:
            blame.append("k" if kind in ("mixed_dtype", "device") and target == "q" else target)
    elif kind == "empty":
        args["q"] = torch.randn(B, S, H, 0).to(dtype)
        blame.append("q")
    elif kind == "scalar":
        eps = data.draw(st.sampled_from([0.0, float("inf"), None]))
        blame.append("eps")

    def call():
        return ck.qk_norm_rope(args["q"], args["k"], args["q_weight"], args["k_weight"], freqs, eps, backend=backend)

    def reference():
        return ref_rope.qk_norm_rope(args["q"], args["k"], args["q_weight"], args["k_weight"], freqs, eps)

    _check(Expect(op, call, reference, blame), dtype)
