"""MFU baselines: record measured configurations in a JSON file, check a later measurement against it.

    record(results, path, append=False)      write / extend a baseline with measure() results
    check(baseline, measure_entry, tolerance) -> rows with before/after step time, MFU and status

A baseline holds the environment it was recorded in (a check on another device is refused unless
asked: step times of two devices are not comparable) and one entry per configuration (its settings,
step time, MFU and the peak it was quoted against). A configuration whose step time grew by more than
the tolerance is a REGRESSION.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from cosmos_models.perf.report import write_json
from cosmos_models.perf.timing import same_device

COLUMNS = ["configuration", "before ms", "after ms", "change", "MFU before", "MFU after", "status"]


def parse_tolerance(text: str) -> float:
    """"3%" -> 0.03, "0.03" -> 0.03."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"--tolerance {text!r}: expected a percentage like 3% or a fraction like 0.03") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--tolerance {text!r} must be >= 0")
    return value


def entry(result: dict, repeats: int) -> dict:
    """The baseline entry of one measure() result."""
    return {"settings": result["settings"], "label": result["label"], "repeats": repeats,
            "step_time_s": result["step_time_s"], "step_time_repeats_s": result["step_time_repeats_s"],
            "mfu": result["mfu"], "tflops": result["tflops"], "peak": result["peak"], "precision": result["precision"]}


def record(result: dict, repeats: int, path: str | Path, *, append: bool = False) -> int:
    """Write the baseline `path` with this result (append: keep the other configurations already in it).
    Returns the number of configurations in the file."""
    path = Path(path)
    env = result["environment"]
    entries = []
    if append and path.exists():
        old = json.loads(path.read_text())
        if not same_device(old["environment"]["device"], env["device"]):
            raise ValueError(f"--append: {path} was recorded on {old['environment']['device']}, "
                             f"this is {env['device']}")
        entries = [e for e in old["entries"] if e["settings"] != result["settings"]]
    entries.append(entry(result, repeats))
    write_json(path, {"environment": env, "entries": entries})
    return len(entries)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline {path} does not exist; record one with `cosmos mfu record --out FILE`")
    return json.loads(path.read_text())


def check(baseline: dict, env: dict, remeasure: Callable[[dict], dict], tolerance: float, *,
          allow_device_mismatch: bool = False) -> tuple[list[dict], list[dict]]:
    """Re-measure every entry (`remeasure(entry) -> measure() result`); (table rows, results)."""
    if not same_device(baseline["environment"]["device"], env["device"]) and not allow_device_mismatch:
        raise ValueError(f"the baseline was recorded on {baseline['environment']['device']!r}, this is "
                         f"{env['device']!r}: step times are not comparable (--allow-device-mismatch to compare anyway)")
    rows, results = [], []
    for e in baseline["entries"]:
        result = remeasure(e)
        results.append(result)
        before, after = e["step_time_s"], result["step_time_s"]
        change = after / before - 1
        status = "REGRESSION" if change > tolerance else ("faster" if change < -tolerance else "ok")
        rows.append({"configuration": e["label"], "before ms": before * 1e3, "after ms": after * 1e3,
                     "change": f"{100 * change:+.1f}%", "MFU before": f"{100 * e['mfu']:.2f}%",
                     "MFU after": f"{100 * e['mfu'] * before / after:.2f}%", "status": status})
    return rows, results
