"""Backend choice: defaults, env override, per-call override, and no silent fallback."""
import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import dispatch


def test_cpu_default_is_reference(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert ck.backend_for("gated_residual", torch.zeros(1)) == "torch"


def test_env_and_call_override(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")  # tests run with TRITON_INTERPRET=1
    assert ck.backend_for("gated_residual", torch.zeros(1)) == "triton"
    assert ck.backend_for("gated_residual", torch.zeros(1), "torch") == "torch"


def test_unknown_backend_and_op():
    with pytest.raises(ValueError, match="unknown backend"):
        ck.backend_for("gated_residual", torch.zeros(1), "cudnn")
    with pytest.raises(ValueError, match="unknown op"):
        ck.backend_for("no_such_op", torch.zeros(1))


def test_requested_unavailable_backend_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ck.BackendUnavailable, match="TRITON_INTERPRET"):
        ck.backend_for("gated_residual", torch.zeros(1), "triton")
    with pytest.raises(ck.BackendUnavailable, match="COSMOS_KERNELS_BACKEND"):
        monkeypatch.setenv(dispatch.ENV_VAR, "triton")
        ck.backend_for("gated_residual", torch.zeros(1))


def test_every_public_name_resolves():
    for name in ck.__all__:
        assert getattr(ck, name) is not None
