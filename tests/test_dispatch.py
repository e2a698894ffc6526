"""Backend choice: the one table, defaults, the one override spelling (env and use_backend), per-call
override, and no silent fallback."""
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


def test_one_spec_spelling_for_the_env_and_the_context_manager(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv(dispatch.ENV_VAR, "triton,flash_attention=torch")
    assert ck.backend_for("gated_residual", x) == "triton" and ck.backend_for("flash_attention", x) == "torch"
    with ck.use_backend("gated_residual=torch"):  # the context manager wins over the environment, per op
        assert ck.backend_for("gated_residual", x) == "torch" and ck.backend_for("adaln_modulate", x) == "triton"
        with ck.use_backend(flash_attention="triton"):  # the innermost wins
            assert ck.backend_for("flash_attention", x) == "triton"
            assert ck.backend_for("flash_attention", x, "torch") == "torch"  # backend= wins over everything
    assert ck.backend_for("gated_residual", x) == "triton"
    monkeypatch.delenv(dispatch.ENV_VAR)
    with ck.use_backend(None):
        assert ck.backend_for("gated_residual", x) == "torch"


def test_the_override_is_seen_by_other_threads():
    """Autograd may run the backward (and checkpoint recomputation) on its own threads."""
    import threading

    got = []
    with ck.use_backend("triton"):
        t = threading.Thread(target=lambda: got.append(ck.backend_for("gated_residual", torch.zeros(1))))
        t.start()
        t.join()
    assert got == ["triton"]


@pytest.mark.parametrize("spec, match", [("cudnn", "unknown backend 'cudnn'"), ("nope=torch", "unknown op 'nope'"),
                                         ("triton,torch", "two default backends"), ("", "expected a backend spec")])
def test_bad_specs_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        dispatch.parse_spec(spec, "--kernel-backend")


def test_use_backend_names_itself_when_the_backend_cannot_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with ck.use_backend("triton"):
        with pytest.raises(ck.BackendUnavailable, match="use_backend"):
            ck.backend_for("gated_residual", torch.zeros(1))


def test_the_table_matches_the_registered_custom_ops():
    """dispatch.OPS is the one table: every op it lists is defined (a custom op of its family module
    with a trailing backend argument), and the table printed by `cosmos selfcheck` has every op."""
    ck._load_all()
    for name, info in dispatch.OPS.items():
        assert callable(getattr(ck, name)), name
        assert info.family in {"adaln", "rope", "flash_attention", "neighborhood_attention", "ulysses"}
        assert set(info.backends) <= set(dispatch.BACKENDS) and "torch" in info.backends
    rows = ck.backend_table("cpu")
    assert [r["op"] for r in rows] == list(dispatch.OPS) and all(r["runs"] == "torch" for r in rows)
