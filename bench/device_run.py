"""The stages of the prepared GPU run (bench/device_run.sh) and the check of what they write.

    python -m bench.device_run STAGE --out DIR [--dry-run]     run one stage, add it to DIR/device_run.json
    python -m bench.device_run mark STAGE --out DIR --status timeout --seconds N
    python -m bench.device_run validate --out DIR [--dry-run]  every stage present, every row of the schema

All stages write into one file, DIR/device_run.json (the device tool brings back at most 8 files),
rewritten atomically after each stage, and a stage that is stopped (its time box ran out: SIGTERM)
still writes the rows it finished with status "timeout". With --dry-run every stage runs on the CPU
with the tiny shapes, so a typo or a schema change fails here, in CI, not on the rented GPU.

The schema ("cosmos-device-run/1"): {"schema", "dry_run", "environment": {device, torch, triton, ...},
"stages": {name: {"status": ok|failed|timeout|skipped, "seconds", "rows": [row], "details", "error"}}},
each row with every key of ROW_KEYS (None where it does not apply): what ran (op, impl, ours, shape,
dtype), its time (time_ms), its rate (tflops, gbps), mfu (of the H100 SXM bf16 dense peak, 989.4
TFLOP/s), memory_bytes (CUDA peak), accuracy (rel_err, ok), and against whom (peer: the best peer of
that op and shape measured in the same run, vs_peer: peer time / ours).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SCHEMA = "cosmos-device-run/1"
RESULT = "device_run.json"
STATUSES = ("ok", "failed", "timeout", "skipped")
ROW_KEYS = ("op", "impl", "ours", "shape", "dtype", "time_ms", "tflops", "gbps", "mfu", "memory_bytes",
            "rel_err", "ok", "peer", "vs_peer", "note")
FAMILIES = ("adaln", "rope", "ulysses", "flash_attention", "neighborhood_attention", "distill")
STAGES = ("env", "selfcheck", "gpu-tests", *(f"kernels-{f}" for f in FAMILIES),
          "train-step-nosac", "train-step-sac", "sample-step")
H100_PEAK = 989.4e12


class Stopped(BaseException):
    """The stage's time box ran out (SIGTERM from `timeout`)."""


def _on_sigterm(signum, frame):
    raise Stopped()


# ----------------------------------------------------------------------------- the result file
def _read(out: Path) -> dict:
    path = out / RESULT
    if path.is_file():
        return json.loads(path.read_text())
    return {"schema": SCHEMA, "stages": {}}


def _write(out: Path, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RESULT}.{os.getpid()}"
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, out / RESULT)


def record(out: Path, stage: str, status: str, seconds: float, rows=(), details=None, error=None,
           dry_run: bool | None = None, environment: dict | None = None) -> None:
    payload = _read(out)
    if dry_run is not None:
        payload["dry_run"] = dry_run
    if environment is not None:
        payload["environment"] = environment
    payload["stages"][stage] = {"status": status, "seconds": seconds, "rows": [normalize(r) for r in rows],
                                "details": details or {}, "error": error}
    _write(out, payload)


def _num(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) else None


def normalize(row: dict) -> dict:
    """A benchmark row (bench/<family>.py columns: ms, TFLOP/s, GB/s, peak_MB ...) in the schema."""
    if set(ROW_KEYS) <= set(row):
        return {k: row[k] for k in ROW_KEYS}
    impl = str(row.get("impl", ""))
    tflops = _num(row.get("TFLOP/s"))
    peak_mb = _num(row.get("peak_MB", row.get("peak_MiB")))
    return {"op": str(row.get("op")), "impl": impl, "ours": impl.startswith("ours"), "shape": str(row.get("shape")),
            "dtype": row.get("dtype"), "time_ms": _num(row.get("ms")), "tflops": tflops,
            "gbps": _num(row.get("GB/s")), "mfu": tflops * 1e12 / H100_PEAK if tflops is not None else None,
            "memory_bytes": int(peak_mb * 2**20) if peak_mb is not None else None,
            "rel_err": _num(row.get("rel_err")), "ok": row.get("ok"), "peer": None,
            "vs_peer": _num(row.get("vs_peer")),
            "note": row.get("note") or ("analytic model, not a measurement" if impl.startswith("model@") else None)}


def with_best_peer(rows: list[dict]) -> list[dict]:
    """Fill `peer` of each of our rows with the fastest peer of the same op, shape and dtype."""
    rows = [normalize(r) for r in rows]
    best: dict = {}
    for r in rows:
        if not r["ours"] and r["time_ms"] is not None:
            key = (r["op"], r["shape"], r["dtype"])
            if key not in best or r["time_ms"] < best[key][1]:
                best[key] = (r["impl"], r["time_ms"])
    for r in rows:
        if r["ours"]:
            peer = best.get((r["op"], r["shape"], r["dtype"]))
            if peer is not None:
                r["peer"] = peer[0]
                if r["vs_peer"] is None and r["time_ms"]:
                    r["vs_peer"] = peer[1] / r["time_ms"]
    return rows


# ----------------------------------------------------------------------------- stages
def _device(dry_run: bool):
    import torch

    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible; run with --dry-run on a machine without a GPU")
    return torch.device("cuda")


def stage_env(out: Path, dry_run: bool, rows: list) -> dict:
    import torch

    from bench.common import environment
    from cosmos_kernels import _ext

    env = environment(_device(dry_run))
    details = {"ext_built": _ext.host_available(), "ext_cuda": _ext.cuda_available() if not dry_run else None,
               "python": sys.executable}
    if not dry_run:
        props = torch.cuda.get_device_properties(0)
        details.update(sm_count=props.multi_processor_count, memory_bytes=props.total_memory)
        try:
            details["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total", "--format=csv"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            details["nvidia_smi"] = f"unavailable: {exc}"
        if not details["ext_cuda"]:
            raise RuntimeError(f"cosmos_kernels._C has no CUDA part ({_ext.unavailable_reason(torch.device('cuda'))})")
    record(out, "env", "ok", 0.0, environment=env, dry_run=dry_run, details=details)
    return details


def stage_selfcheck(out: Path, dry_run: bool, rows: list) -> dict:
    """Every kernel against its reference on this device, small shapes (correctness, not speed)."""
    import importlib

    device = _device(dry_run)
    for fam in FAMILIES:
        importlib.import_module(f"bench.{fam}").run(device, True, rows)
    bad = [r for r in rows if r.get("ok") is False]
    if bad:
        raise AssertionError(f"{len(bad)} kernel row(s) exceed their accuracy threshold: "
                             + "; ".join(f"{r['op']} {r['impl']} {r['shape']} rel_err={r.get('rel_err')}" for r in bad))
    return {"families": list(FAMILIES)}


def stage_gpu_tests(out: Path, dry_run: bool, rows: list) -> dict:
    """The tests marked `gpu` (compiled Triton and CUDA on the device); in a dry run only collected."""
    junit = out / ".gpu_tests.xml"
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs",
           f"--junitxml={junit}"]
    if dry_run:
        cmd.append("--collect-only")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr)[-4000:]
    if dry_run:
        collected = [line for line in proc.stdout.splitlines() if "::" in line]
        if proc.returncode not in (0,) or not collected:
            raise RuntimeError(f"collecting the gpu tests failed (exit {proc.returncode}):\n{tail}")
        return {"collected": len(collected), "note": "dry run: collected, not run (no GPU)"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    if junit.is_file():
        root = ET.parse(junit).getroot()
        for suite in ([root] if root.tag == "testsuite" else root.findall("testsuite")):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
        junit.unlink()
    details = {**counts, "failed": failed, "exit_code": proc.returncode, "output_tail": tail}
    if proc.returncode != 0:
        raise AssertionError(json.dumps(details))
    return details


def _stage_family(family: str):
    def stage(out: Path, dry_run: bool, rows: list) -> dict:
        import importlib

        device = _device(dry_run)
        importlib.import_module(f"bench.{family}").run(device, dry_run, rows)
        rows[:] = with_best_peer(rows)
        bad = [r for r in rows if r["ok"] is False]
        if bad:
            raise AssertionError(f"{len(bad)} row(s) of ours exceed their accuracy threshold")
        return {"family": family, "shapes": "quick (dry run)" if dry_run else "full (DESIGN.md model shapes)"}
    stage.__doc__ = f"bench/{family}.py: ours against the peers, measured in the same run."
    return stage


def _train_step(sac: str):
    def stage(out: Path, dry_run: bool, rows: list) -> dict:
        from cosmos_models.perf import baselines, mfu
        device = _device(dry_run)
        if dry_run:
            settings = mfu.StepSettings("tiny", sac=sac, steps=2, warmup=1, threads=1)
        else:
            settings = mfu.StepSettings("predict2.5-2b", resolution="480p", frames=93, sac=sac, precision="bf16",
                                        steps=3, warmup=1)
        result = mfu.measure(settings, device, repeats=1, peak="h100" if not dry_run else "measured")
        mem = result["memory"].get("peak_allocated_bytes")
        rows.append({"op": "train_step", "impl": "ours:trainer", "ours": True, "shape": result["label"],
                     "dtype": result["precision"], "time_ms": result["step_time_s"] * 1e3,
                     "tflops": result["tflops"], "gbps": None, "mfu": result["mfu_h100"], "memory_bytes": mem,
                     "rel_err": None, "ok": math.isfinite(result["loss"]), "peer": None, "vs_peer": None,
                     "note": f"tokens/s {result['tokens_per_s']:.4g}; peak {result['peak']['used']}"})
        baseline = {"environment": result["environment"], "entries": [baselines.entry(result, 1)]}
        return {"result": result, "mfu_baseline_entry": baseline}
    stage.__doc__ = f"The 2B training step at 480p x 93 frames on one GPU, bf16, SAC {sac}, MFU from analytic FLOPs."
    return stage


def stage_sample_step(out: Path, dry_run: bool, rows: list) -> dict:
    """The 2B sampling step at 720p x 93 frames: one NFE with CFG, and the projected 35-step time."""
    from bench.sample_step import measure

    if dry_run:
        result = measure("tiny", iters=2, warmup=1, device="cpu")
    else:
        result = measure("predict2.5-2b", "720p", 93, guidance=7.0, steps=35, iters=2, warmup=1, device="cuda")
    rows.append({"op": "sample_step", "impl": "ours:sampler", "ours": True,
                 "shape": f"{result['config']} {result['height']}x{result['width']}x{result['frames']}",
                 "dtype": result["dtype"], "time_ms": result["step_time_s"] * 1e3, "tflops": result["tflops"],
                 "gbps": None, "mfu": result["mfu_h100"], "memory_bytes": result["memory"]["peak_allocated_bytes"],
                 "rel_err": None, "ok": True, "peer": None, "vs_peer": None,
                 "note": f"{result['forwards_per_step']} forwards/step (CFG {result['guidance']}); "
                         f"{result['projected_steps']} steps projected {result['projected_run_s']:.1f} s"})
    return {"result": result}


RUNNERS = {"env": stage_env, "selfcheck": stage_selfcheck, "gpu-tests": stage_gpu_tests,
           **{f"kernels-{f}": _stage_family(f) for f in FAMILIES},
           "train-step-nosac": _train_step("none"), "train-step-sac": _train_step("predict2_2b_720_aggressive"),
           "sample-step": stage_sample_step}


def run_stage(name: str, out: Path, dry_run: bool) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    rows: list = []
    start = time.perf_counter()
    status, details, error = "ok", {}, None
    try:
        details = RUNNERS[name](out, dry_run, rows) or {}
        if name == "env":
            return 0  # stage_env recorded itself (with the environment)
    except Stopped:
        status, error = "timeout", "stopped by its time box (SIGTERM); rows are those finished before"
    except BaseException as exc:  # noqa: BLE001 - a failed stage is a result; the next stage still runs
        status, error = "failed", f"{type(exc).__name__}: {exc}"[-4000:]
    finally:
        if name != "env" or status != "ok":
            record(out, name, status, time.perf_counter() - start, rows, details, error,
                   dry_run=dry_run if name == "env" else None)
    print(f"device_run: {name}: {status} in {time.perf_counter() - start:.1f} s ({len(rows)} rows)"
          + (f"\n  {error}" if error else ""), flush=True)
    return 0 if status == "ok" else 1


# ----------------------------------------------------------------------------- validation
def validate(out: Path, dry_run: bool) -> list[str]:
    """Problems with DIR/device_run.json (empty list: valid). A dry run must have every stage ok."""
    path = out / RESULT
    if not path.is_file():
        return [f"{path} was not written"]
    payload = json.loads(path.read_text())
    problems = []
    if payload.get("schema") != SCHEMA:
        problems.append(f"schema is {payload.get('schema')!r}, expected {SCHEMA!r}")
    env = payload.get("environment") or {}
    for key in ("device", "device_type", "torch", "triton"):
        if not isinstance(env.get(key), str) or not env.get(key):
            problems.append(f"environment.{key} is missing")
    if payload.get("dry_run") is not dry_run:
        problems.append(f"dry_run is {payload.get('dry_run')!r}, expected {dry_run}")
    stages = payload.get("stages", {})
    for name in STAGES:
        stage = stages.get(name)
        if stage is None:
            problems.append(f"stage {name} is missing")
            continue
        if stage.get("status") not in STATUSES:
            problems.append(f"stage {name}: status {stage.get('status')!r} not one of {STATUSES}")
        if dry_run and stage.get("status") != "ok":
            problems.append(f"stage {name}: {stage.get('status')} in the dry run: {stage.get('error')}")
        if not isinstance(stage.get("seconds"), (int, float)):
            problems.append(f"stage {name}: seconds missing")
        for i, row in enumerate(stage.get("rows", [])):
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                problems.append(f"stage {name} row {i}: missing {missing}")
                continue
            for k in ("time_ms", "tflops", "gbps", "mfu", "rel_err", "vs_peer"):
                v = row[k]
                if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                    problems.append(f"stage {name} row {i}: {k}={v!r} is not a finite number >= 0")
            if not isinstance(row["ours"], bool) or not row["op"] or not row["impl"]:
                problems.append(f"stage {name} row {i}: op/impl/ours malformed: {row}")
        timed = [r for r in stage.get("rows", []) if isinstance(r, dict) and r.get("time_ms")]
        wants_rows = name.startswith(("kernels-", "train-step", "sample-step")) or name == "selfcheck"
        if wants_rows and stage.get("status") == "ok" and not timed:
            problems.append(f"stage {name}: ok but no timed row")
        if name.startswith("kernels-") and stage.get("status") == "ok" and name != "kernels-ulysses":
            if not any(r.get("ours") for r in timed) or not any(not r.get("ours") for r in timed):
                problems.append(f"stage {name}: needs rows of ours and of a peer measured in the same run")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.device_run", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("stage", choices=(*STAGES, "mark", "validate"))
    p.add_argument("name", nargs="?", help="mark: the stage to mark")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--status", choices=STATUSES, default="timeout")
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--why", default=None)
    args = p.parse_args(argv)
    if args.stage == "mark":
        if args.name not in STAGES:
            p.error(f"mark: unknown stage {args.name!r}")
        existing = _read(args.out)["stages"].get(args.name, {})
        if args.status == "timeout" and existing.get("status") == "timeout":
            return 0  # the stage recorded its own rows when it was stopped
        record(args.out, args.name, args.status, args.seconds, existing.get("rows", []), existing.get("details"),
               args.why or f"{args.status} (set by device_run.sh)")
        return 0
    if args.stage == "validate":
        problems = validate(args.out, args.dry_run)
        for line in problems:
            print(f"device_run: invalid: {line}", file=sys.stderr)
        if not problems:
            print(f"device_run: {args.out / RESULT} is valid ({len(STAGES)} stages)")
        return 1 if problems else 0
    return run_stage(args.stage, args.out, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
