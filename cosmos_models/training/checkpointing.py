"""Training checkpoints: torch.distributed.checkpoint (DCP) directories written atomically.

(Model weight files for the sampler, official/diffusers names, are cosmos_models/nets/checkpoint.py;
this module holds the trainer's resumable state.)

Layout under the run's checkpoint folder:

    step_000100/        one complete checkpoint: DCP shards (__<rank>_0.distcp) + .metadata + trainer.json
    step_000200/
    latest              "step_000200\\n": the newest complete checkpoint (written with os.replace)

Saving writes every rank's shards into `step_000200.tmp/`; only after DCP has finished on every
rank (its .metadata is written last, files fsynced) does rank 0 rename the folder to
`step_000200` and then replace `latest`. A process killed at any point before the rename leaves
only a `.tmp` folder, which the next save or start removes; `latest` and the older checkpoints are
never touched before the new one is complete. `find_latest` trusts `latest` only when it names a
complete folder and otherwise picks the highest complete `step_*`, so even a kill between the
rename and the pointer update resumes from the newest complete state.

The state is a nested dict: tensors and DTensors (sharded: each rank writes its shards; loading
reshards), plus plain values. Values that differ per rank (data-loader position, RNG states) go
under a key of their own rank (`rank_state_key(rank)`), because DCP keeps one copy of a key that
every rank writes.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def rank_state_key(rank: int) -> str:
    return f"rank_{rank}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a partial one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def is_complete(path: str) -> bool:
    return os.path.isdir(path) and _STEP_DIR.match(os.path.basename(path)) is not None and \
        os.path.isfile(os.path.join(path, ".metadata"))


def complete_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint under root, by step."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        if match and is_complete(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def find_latest(root: str) -> str | None:
    """The checkpoint to resume from: the one `latest` names if complete, else the highest complete one."""
    pointer = os.path.join(root, LATEST)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            name = f.read().strip()
        if name and os.sep not in name and is_complete(os.path.join(root, name)):
            return os.path.join(root, name)
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def remove_partial(root: str) -> list[str]:
    """Delete leftovers of interrupted saves (`*.tmp`, `*.old` folders); rank 0 only. Returns them."""
    if _rank() != 0 or not os.path.isdir(root):
        return []
    removed = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if os.path.isdir(path) and (name.endswith(".tmp") or name.endswith(".old")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_shards(state: dict, path: str) -> None:
    """Every rank writes its part of `state` into the folder `path` (DCP; files fsynced, .metadata last)."""
    dcp.save(state, checkpoint_id=path)


def save(root: str, step: int, state: dict, *, info: dict | None = None, keep_last: int = 0) -> str:
    """Write `state` as checkpoint `step` under root atomically (see the module docstring); every
    rank must call it. `info` (JSON-able) goes to trainer.json for people and tools. keep_last > 0
    deletes the oldest complete checkpoints beyond that many. Returns the checkpoint's path."""
    final = os.path.join(root, step_dir_name(step))
    tmp = final + ".tmp"
    if _rank() == 0:
        os.makedirs(root, exist_ok=True)
        remove_partial(root)
        os.makedirs(tmp)
    _barrier()
    write_shards(state, tmp)
    _barrier()
    if _rank() == 0:
        if info is not None:
            write_text_atomic(os.path.join(tmp, "trainer.json"), json.dumps(info, indent=1, sort_keys=True) + "\n")
        old = None
        if os.path.exists(final):  # the same step saved again (e.g. a re-run from an earlier checkpoint)
            old = final + ".old"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(root)
        write_text_atomic(os.path.join(root, LATEST), os.path.basename(final) + "\n")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if keep_last > 0:
            for _, path in complete_checkpoints(root)[:-keep_last]:
                if path != final:
                    shutil.rmtree(path, ignore_errors=True)
    _barrier()
    return final


def load(path: str, state: dict) -> None:
    """Load checkpoint folder `path` into `state` in place (tensors are filled, plain values replaced);
    every rank must call it with the keys it wants (its own rank_state_key among them)."""
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no DCP .metadata in it)")
    dcp.load(state, checkpoint_id=path)


def read_info(path: str) -> dict:
    """trainer.json of a checkpoint folder ({} if absent)."""
    file = os.path.join(path, "trainer.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return json.load(f)
