"""A run folder has one writer and remembers what it was started with.

    RunLock.acquire(out)         an exclusive lock (fcntl.flock on OUT/.lock) held for the whole run;
                                 a second run on the same folder fails at once naming the holder;
                                 a lock file left by a dead process is taken over with a warning
    manifest(...)                what the run was started with: its identity (the model config's name
                                 and contents, the data folder and its size, the seed, the global batch,
                                 clip shape, ...), every setting, the world layout, versions, the command
    write_manifest / compare     OUT/run.json; a resumed run is compared with it: a change of identity
                                 (the model or the data order) is refused unless --allow-change KEY;
                                 other changes are allowed and recorded in run.json ("resumes"), with a
                                 warning for those that change what the steps compute (--lr, ...) and
                                 silently for those that do not (--steps, --log-every, --cp, ...)

The lock is advisory (every cosmos run takes it); flock is released by the kernel when the process
dies, so a crashed run never blocks the next one; the pid/host/time written into the file are for the
message only.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import time

import torch

from cosmos_models.errors import RunFolderInUse

LOCK_NAME = ".lock"
MANIFEST = "run.json"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# settings whose change on --resume does not change what the steps compute (up to floating-point
# reduction order); the flags whose meaning is compared in resolved form (data, batch, resolution,
# frames: see the identity) are among them
HARMLESS = frozenset({"resume", "steps", "save_every", "keep_last", "log_every", "progress", "dist_timeout",
                      "num_workers", "out", "device", "allow_change", "max_bad_steps", "kernel_backend", "cp",
                      "cp_overlap_chunks", "hsdp_replicate", "sac", "data", "batch", "resolution", "frames", "image_batch",
                      "cache_latents", "synthetic_clips", "log_to", "wandb_project", "text_encoder"})


class RunLock:
    def __init__(self, path: str, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out: str, *, warn=print) -> RunLock:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, *NO_FLOCK):
                os.close(fd)
                raise
            # a filesystem without flock (some network filesystems): the pid in the file decides
            held = exc.errno not in NO_FLOCK or _alive(_read_holder(fd))
            if exc.errno in NO_FLOCK:
                warn(f"cosmos: {out} is on a filesystem without flock; the run folder lock falls back to the pid "
                     "written in it (two runs started at the same instant are not caught)")
        if held:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderInUse(f"{out} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                                 f"{holder.get('since', '?')} (lock {path}); wait for it to end, stop it, or choose "
                                 "another --out") from None
        previous = _read_holder(fd)
        if previous.get("pid") and not _alive(previous):
            warn(f"cosmos: taking over the lock of {out} left by pid {previous['pid']} on {previous.get('host')} "
                 f"(since {previous.get('since')}), which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}).encode(), 0)
        os.fsync(fd)
        return cls(path, fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass  # no flock here (see acquire); closing releases what there is
        finally:
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # the kernel released its flock: whatever runs there does not hold it
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- the manifest
def content_hash(values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_summary(root: str | None, extensions) -> dict:
    """The data folder's inputs: path, number and bytes of the files with these extensions (videos,
    images, captions, text embeddings). Caches the runs write into it (cached latents) are not
    counted, so --cache-latents does not look like other data."""
    if root is None:
        return {"path": None, "files": 0, "bytes": 0}
    files = total = 0
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            lower = name.lower()
            if name.startswith(".") or not lower.endswith(tuple(extensions)) or lower.endswith(".latent.pt"):
                continue
            files += 1
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return {"path": os.path.abspath(root), "files": files, "bytes": total}


def manifest(kind: str, identity: dict, settings: dict, layout, recipe: dict | None = None) -> dict:
    """The record of OUT/run.json. `identity`: what must not change on --resume (the model, the data
    order); `settings`: every flag; `recipe`: values resolved from the flags (a warm-up derived from
    --steps, ...), whose change is warned about; `layout`: the process layout (parallel.Layout)."""
    import triton

    return {
        "kind": kind, "identity": identity, "identity_hash": content_hash(identity), "settings": settings,
        "recipe": recipe or {},
        "world": {"processes": layout.world, "cp": layout.cp, "replicate": layout.replicate,
                  "device": layout.device.type},
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0]},
        "command": sys.argv, "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "resumes": [],
    }


def write_manifest(out: str, record: dict) -> None:
    """OUT/run.json, atomically (readers see the old or the new file)."""
    path = os.path.join(out, MANIFEST)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(out: str) -> dict | None:
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); it records what this run folder was started with: "
                         "restore it, or delete it to accept the current settings") from None


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def compare(saved: dict, new: dict, allowed=()) -> tuple[list[str], list[str], list[str]]:
    """(refused, warned, recorded) changes of a resumed run against its manifest.

    refused: identity entries that differ and are not in `allowed` (names as in the identity, e.g.
    "config", "data", "seed", "batch"; dashes or underscores); warned: settings outside HARMLESS that
    differ (the continuation computes other steps than the interrupted run would have); recorded:
    everything that differs, allowed identity changes and harmless settings included."""
    allowed = {a.replace("-", "_") for a in allowed}
    refused, warned, recorded = [], [], []
    old_id, new_id = saved.get("identity", {}), new["identity"]
    for key in sorted(set(old_id) | set(new_id)):
        a, b = old_id.get(key), new_id.get(key)
        if a == b:
            continue
        change = f"{key}: {_short(a)} -> {_short(b)}"
        recorded.append(change)
        if key not in allowed:
            refused.append(change)
    old_settings, new_settings = saved.get("settings", {}), new["settings"]
    for key in sorted(set(old_settings) | set(new_settings)):
        a, b = old_settings.get(key), new_settings.get(key)
        if a == b or key in ("resume", "allow_change") or key in new_id:
            continue
        change = f"{_flag(key)}: {_short(a)} -> {_short(b)}"
        recorded.append(change)
        if key not in HARMLESS:
            warned.append(change)
    old_recipe, new_recipe = saved.get("recipe", {}), new.get("recipe", {})
    for key in sorted(set(old_recipe) & set(new_recipe)):
        a, b = old_recipe[key], new_recipe[key]
        if a != b:
            change = f"{key} (resolved): {_short(a)} -> {_short(b)} (pass {_flag(key)} {_short(a)} to keep it)"
            recorded.append(change)
            warned.append(change)
    old_world, new_world = saved.get("world", {}), new["world"]
    if old_world and old_world != new_world:
        recorded.append(f"world: {_short(old_world)} -> {_short(new_world)}")
    return refused, warned, recorded


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 200 else text[:200] + "..."
