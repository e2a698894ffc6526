"""Launch-configuration tuning: measure candidate tiles per problem, keep the winners on disk.

A tuned entry is keyed by (kernel, dtype, head dim, sequence-length bucket, device name, Triton
version) and holds the winning `Blocks` (tile sizes, warps, stages, variant). Kernels ask
`lookup()` at launch and fall back to their built-in table (e.g. triton/flash_attention.CONFIGS)
when there is no entry, so an empty or missing cache means today's behaviour exactly.

Where the entries live (read in this order, the first with the key wins):
  1. the user cache: $COSMOS_KERNELS_TUNE_CACHE, else $XDG_CACHE_HOME/cosmos_kernels/tuning.json
     (~/.cache/cosmos_kernels/tuning.json), written by `cosmos tune` (atomically);
  2. files shipped in the package, cosmos_kernels/tuned/*.json, for known GPUs (a file lands
     only with the GPU measurement that produced it).
A corrupt file, another schema, or an entry naming a variant this Triton lacks is skipped with
one warning naming the file and what to do; it never crashes a launch.

Tuning never trades accuracy: `tune()` runs every candidate once against the reference and drops
any whose relative error exceeds the dtype's threshold (DESIGN.md) before timing it. The timer is
a parameter (CUDA-event timing by default), so the tuner itself is tested on the CPU with a fake
timer in the Triton interpreter.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

SCHEMA = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "tuned"


def cache_path() -> Path:
    env = os.environ.get("COSMOS_KERNELS_TUNE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cosmos_kernels" / "tuning.json"


def seq_bucket(seq_len: int) -> int:
    """Sequence lengths tune per power-of-two bucket (the next power of two, at least 128)."""
    return max(128, 1 << max(0, int(seq_len) - 1).bit_length())


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


@lru_cache(maxsize=None)
def _device_name_of(device_type: str, index: int | None) -> str:
    if device_type == "cuda":
        return torch.cuda.get_device_name(index)
    return device_type  # the interpreter on the CPU: its own key, never a GPU's


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
    return _device_name_of(device.type, index)


def _triton_version() -> str:
    import triton
    return triton.__version__


def key(kernel: str, dtype: torch.dtype, head_dim: int, seq_len: int, device: str) -> str:
    return f"{kernel}|{_dtype_name(dtype)}|d{head_dim}|s{seq_bucket(seq_len)}|{device}|triton-{_triton_version()}"


@dataclass
class Entry:
    """One tuned problem: the winner and what it was measured against."""
    blocks: dict                 # the winning Blocks as a dict (m, n, warps, stages, variant)
    ms: float                    # its median time
    default_ms: float | None     # the built-in table's time on the same problem, same run
    shape: list = field(default_factory=list)  # the problem measured (B, S_q, S_k, H, D)
    rejected: dict = field(default_factory=dict)  # candidate label -> why it was dropped


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
_warned: set = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def read_file(path: Path) -> dict[str, dict]:
    """The entries of one cache file; {} (with one warning) when it is unreadable or stale."""
    if not path.is_file():
        return {}
    fix = "delete it or run `cosmos tune` again to rewrite it; the built-in launch tables are used meanwhile"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _warn_once(f"cosmos_kernels tuning cache {path} is unreadable ({type(exc).__name__}: {exc}); {fix}")
        return {}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        _warn_once(f"cosmos_kernels tuning cache {path} has schema {found!r}, this library reads schema "
                   f"{SCHEMA}; {fix}")
        return {}
    return data["entries"]


@lru_cache(maxsize=1)
def _all_entries() -> tuple[tuple[Path, dict], ...]:
    files = [cache_path()] + (sorted(SHIPPED_DIR.glob("*.json")) if SHIPPED_DIR.is_dir() else [])
    return tuple((p, read_file(p)) for p in files)


def reload() -> None:
    """Forget what was read (after `tune()` wrote, or the cache path changed)."""
    _all_entries.cache_clear()
    _warned.clear()


def lookup(kernel: str, dtype: torch.dtype, head_dim: int, seq_len: int, device, *,
           make: Callable[..., object], variants: Sequence[str]):
    """The tuned launch configuration for this problem as `make(**blocks)`, or None (use the
    built-in table). An entry naming a variant not in `variants` (this Triton lacks it) or with
    fields `make` rejects is skipped with a warning."""
    sources = _all_entries()
    if not any(entries for _, entries in sources):
        return None  # no cache (the usual case): nothing to format or look up on this launch
    k = key(kernel, dtype, head_dim, seq_len, device_name(device))
    for path, entries in sources:
        entry = entries.get(k)
        if entry is None:
            continue
        blocks = entry.get("blocks") if isinstance(entry, dict) else None
        try:
            cfg = make(**blocks)
        except (TypeError, ValueError) as exc:
            _warn_once(f"cosmos_kernels tuning cache {path}: entry {k!r} is malformed ({exc}); skipped")
            continue
        if getattr(cfg, "variant", None) not in variants:
            _warn_once(f"cosmos_kernels tuning cache {path}: entry {k!r} names variant "
                       f"{getattr(cfg, 'variant', None)!r}, which this Triton ({_triton_version()}) does not "
                       f"offer (available: {', '.join(variants)}); skipped")
            continue
        return cfg
    return None


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def write_entries(new: dict[str, Entry], path: Path | None = None) -> Path:
    """Merge `new` into the cache file at `path` (the user cache by default), atomically: a
    crash mid-write leaves the previous file whole."""
    path = Path(path) if path is not None else cache_path()
    entries = read_file(path)
    entries.update({k: asdict(e) for k, e in new.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"schema": SCHEMA, "entries": entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    reload()
    return path


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------
def cuda_timer(fn: Callable[[], object]) -> float:
    """Median milliseconds of fn on the GPU (Triton's do_bench: CUDA events, L2 flushed)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


@dataclass
class Outcome:
    """What tune() found for one problem."""
    key: str
    winner: object
    entry: Entry
    times: dict  # candidate label -> ms (accepted candidates only)


def tune(kernel: str, problem: Sequence[int], dtype: torch.dtype, device, *, seq_len: int,
         candidates: Iterable, default, run: Callable[[object], object], error: Callable[[object], float],
         tolerance: float, timer: Callable[[Callable[[], object]], float] | None = None) -> Outcome:
    """Time every candidate configuration of `kernel` on one problem and return the fastest that
    is accurate. `run(cfg)` launches the kernel with cfg and returns its outputs; `error(outputs)`
    is their relative error against the reference; candidates above `tolerance`, or that fail to
    launch (e.g. out of shared memory), are dropped with the reason. `default` (the built-in
    table's configuration) is always measured, so the entry records what tuning gained.
    `seq_len`: the length the kernel loops over (its cache bucket; see the kernel's launcher)."""
    timer = timer or cuda_timer
    D = problem[-1]
    times, rejected = {}, {}
    cands = [default] + [c for c in candidates if c != default]
    for cfg in cands:
        label = label_of(cfg)
        try:
            err = float(error(run(cfg)))
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot launch is a result, not a crash
            rejected[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            continue
        if not err <= tolerance:  # NaN fails too
            rejected[label] = f"relative error {err:.3e} > {tolerance:.1e}"
            continue
        times[label] = float(timer(lambda cfg=cfg: run(cfg)))
    if not times:
        raise RuntimeError(f"cosmos tune: no candidate of {kernel} ran accurately on {tuple(problem)} "
                           f"{_dtype_name(dtype)}: " + "; ".join(f"{k}: {v}" for k, v in rejected.items()))
    best = min(times, key=times.get)
    winner = next(c for c in cands if label_of(c) == best)
    entry = Entry(blocks=asdict(winner), ms=times[best], default_ms=times.get(label_of(default)),
                  shape=list(problem), rejected=rejected)
    return Outcome(key(kernel, dtype, D, seq_len, device_name(device)), winner, entry, times)


def label_of(cfg) -> str:
    d = asdict(cfg)
    return " ".join(f"{k}={v}" for k, v in d.items())
