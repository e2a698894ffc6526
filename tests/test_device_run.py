"""The prepared GPU run (bench/device_run.sh): its dry run on the CPU walks every stage and writes
a valid result file; the validator rejects what the GPU run must never return; a stage stopped by
its time box keeps its rows."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from bench import device_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "COSMOS_KERNELS_POISON")}
    return {**env, "PYTHON": sys.executable}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_run")
    proc = subprocess.run(["bash", "bench/device_run.sh", "--dry-run"], cwd=ROOT, env={**_env(), "OUT": str(out)},
                          capture_output=True, text=True, timeout=600)
    return out, proc


def test_dry_run_walks_every_stage_and_writes_the_final_schema(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    payload = json.loads((out / device_run.RESULT).read_text())
    assert payload["dry_run"] is True and set(payload["stages"]) == set(device_run.STAGES)
    assert all(stage["status"] == "ok" for stage in payload["stages"].values())
    assert payload["environment"]["torch"] and payload["environment"]["triton"]
    flash = payload["stages"]["kernels-flash_attention"]["rows"]
    ours = [r for r in flash if r["ours"] and r["op"] == "flash_attention.fwd"]
    assert ours and all(r["peer"] and r["vs_peer"] > 0 and r["time_ms"] > 0 for r in ours)
    train = payload["stages"]["train-step-nosac"]["rows"][0]
    assert train["op"] == "train_step" and train["tflops"] > 0 and train["mfu"] > 0
    sample = payload["stages"]["sample-step"]["rows"][0]
    assert sample["op"] == "sample_step" and sample["time_ms"] > 0
    assert (out / "device_run.log").is_file() and len(os.listdir(out)) <= 8  # what the device tool brings back
    assert device_run.validate(out, dry_run=True) == []


def test_validate_rejects_missing_stages_bad_numbers_and_missing_keys(dry_run, tmp_path):
    out, _ = dry_run
    payload = json.loads((out / device_run.RESULT).read_text())
    cases = {
        "missing stage": lambda p: p["stages"].pop("sample-step"),
        "NaN time": lambda p: p["stages"]["kernels-adaln"]["rows"][0].update(time_ms=math.nan),
        "missing key": lambda p: p["stages"]["kernels-rope"]["rows"][0].pop("tflops"),
        "no environment": lambda p: p.pop("environment"),
        "failed stage": lambda p: p["stages"]["env"].update(status="failed"),
        "no peer rows": lambda p: p["stages"]["kernels-flash_attention"].update(
            rows=[r for r in p["stages"]["kernels-flash_attention"]["rows"] if r["ours"]]),
    }
    for name, spoil in cases.items():
        broken = json.loads(json.dumps(payload))
        spoil(broken)
        (tmp_path / device_run.RESULT).write_text(json.dumps(broken))
        assert device_run.validate(tmp_path, dry_run=True), name


def test_a_stage_stopped_by_its_time_box_records_timeout_and_its_rows(tmp_path, monkeypatch):
    row = {"op": "x", "impl": "ours:torch", "ms": 1.5, "TFLOP/s": 2.0}

    def slow_stage(out, dry_run, rows):
        rows.append(row)                       # one shape finished ...
        os.kill(os.getpid(), signal.SIGTERM)   # ... then `timeout` stops the stage
        time.sleep(5)
        rows.append(dict(row, op="never"))

    monkeypatch.setitem(device_run.RUNNERS, "kernels-adaln", slow_stage)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert device_run.run_stage("kernels-adaln", tmp_path, dry_run=True) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    stage = json.loads((tmp_path / device_run.RESULT).read_text())["stages"]["kernels-adaln"]
    assert stage["status"] == "timeout" and "SIGTERM" in stage["error"]
    assert [r["op"] for r in stage["rows"]] == ["x"] and stage["rows"][0]["time_ms"] == 1.5
    # the shell's mark after `timeout` returns keeps what the stage wrote
    assert device_run.main(["mark", "kernels-adaln", "--out", str(tmp_path), "--status", "timeout"]) == 0
    again = json.loads((tmp_path / device_run.RESULT).read_text())["stages"]["kernels-adaln"]
    assert again == stage
    # a stage killed before it wrote anything is marked with no rows
    assert device_run.main(["mark", "sample-step", "--out", str(tmp_path), "--status", "timeout", "--seconds", "60"]) == 0
    marked = json.loads((tmp_path / device_run.RESULT).read_text())["stages"]["sample-step"]
    assert marked["status"] == "timeout" and marked["rows"] == [] and marked["seconds"] == 60
