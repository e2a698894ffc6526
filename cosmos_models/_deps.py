"""Optional packages, imported where a feature needs them.

`import cosmos_kernels`, `cosmos selfcheck`, `cosmos bench kernels` and `cosmos bench train-step`
need only torch, Triton, numpy and safetensors (what a GPU image usually has). Video files (PyAV),
the control signals (OpenCV), the WAN VAE (diffusers), the text encoder (transformers), LoRA (peft),
loggers (tensorboard, wandb), progress bars (tqdm) and charts (matplotlib) are imported on first use
through `require`, which names the missing package, the feature that needs it, and how to install it.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

# import name -> (pip name, extra of cosmos-kernels that installs it)
PACKAGES = {
    "av": ("av", "video"),
    "cv2": ("opencv-python-headless", "video"),
    "diffusers": ("diffusers", "vae"),
    "transformers": ("transformers", "text"),
    "peft": ("peft", "lora"),
    "tensorboard": ("tensorboard", "logging"),
    "wandb": ("wandb", "logging"),
    "tqdm": ("tqdm", "cli"),
    "matplotlib": ("matplotlib", "bench"),
    "hypothesis": ("hypothesis", "test"),
}


class MissingDependency(ImportError):
    """An optional package that a requested feature needs is not installed."""


def require(module: str, feature: str) -> ModuleType:
    """Import `module` (e.g. "av"), or raise MissingDependency saying that `feature` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pip, extra = PACKAGES.get(top, (top, None))
        how = f"pip install {pip}" + (f"  (or pip install 'cosmos-kernels[{extra}]')" if extra else "")
        raise MissingDependency(f"{feature} needs the Python package `{pip}`, which is not installed here "
                                f"({exc}); install it with: {how}") from exc


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


class _NoBar:
    """What a progress bar offers, doing nothing (tqdm not installed, or no terminal)."""

    def __init__(self, *args, **kwargs):
        self.n = kwargs.get("initial", 0)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    @staticmethod
    def write(line: str, file=None) -> None:
        print(line, file=file or sys.stdout, flush=True)


def progress_bar(*, total: int, desc: str, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr when tqdm is installed and `enabled`, else a silent stand-in."""
    if not enabled:
        return _NoBar(**kwargs)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar(**kwargs)
    return tqdm(total=total, desc=desc, file=sys.stderr, **kwargs)


def console_write(line: str) -> None:
    """A line on stdout that does not break an open tqdm bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, flush=True)
        return
    tqdm.write(line)
