"""Optional packages (cosmos_models/_deps.py): the kernels, the self-check and the benchmarks run
without any of them; a feature that needs one names it in one line.

Each case runs `cosmos ...` in a fresh interpreter where the optional packages cannot be imported
(`sys.modules[name] = None`, what Python does for a package that is not installed)."""
import os
import subprocess
import sys
import textwrap

import pytest

OPTIONAL = ("av", "cv2", "diffusers", "tqdm", "nvtx", "transformers", "peft", "matplotlib", "tensorboard", "wandb")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cosmos_without(blocked, *argv, timeout=300):
    code = textwrap.dedent(f"""
        import sys
        for name in {tuple(blocked)!r}:
            sys.modules[name] = None
        from cosmos_models.cli import main
        sys.exit(main({list(argv)!r}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_import_of_every_library_module_needs_no_optional_package():
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None
        import cosmos_kernels, cosmos_models
        cosmos_kernels._load_all()
        for pkg in (cosmos_kernels, cosmos_models):
            for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if not info.name.endswith("__main__"):  # `python -m` entry points run when imported
                    importlib.import_module(info.name)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# `cosmos selfcheck` without the optional packages is CI leg 2's first step (.ci/oldest.sh: a venv of
# `pip install --no-deps`, every family, the GPU image's pair), a stronger check than blocking imports here.


def test_bench_train_step_runs_without_optional_packages(tmp_path):
    out = tmp_path / "ts.json"
    proc = cosmos_without(OPTIONAL, "bench", "train-step", "--config", "tiny", "--steps", "1", "--warmup", "0",
                          "--breakdown-steps", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()


@pytest.mark.parametrize("blocked, named", [(("diffusers",), "diffusers"), (("av",), "av")])
def test_a_feature_that_needs_a_missing_package_says_which_in_one_line(tmp_path, blocked, named):
    proc = cosmos_without(blocked, "sample", "--config", "tiny", "--steps", "1", "--out", str(tmp_path / "v.mp4"))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cosmos sample: error:")]
    assert len(errors) == 1 and f"`{named}`" in errors[0] and "pip install" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
