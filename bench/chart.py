"""Speedup chart of `cosmos bench kernels --chart FILE.png`: ours vs the best peer, per op and shape.

A row is ours when its impl starts with "ours:" and it was checked against the reference (it has
a rel_err and did not fail); a peer when it was timed and is neither ours nor an analytic model
("model@..." rows are bounds, not measurements). For each (op, shape, dtype) with both, the
speedup is best peer time / best ours time (> 1: ours is faster).
"""
from __future__ import annotations

from pathlib import Path


def _timed(row: dict) -> bool:
    return isinstance(row.get("ms"), (int, float)) and row["ms"] > 0


def speedups(rows: list[dict]) -> list[dict]:
    """[{op, shape, dtype, ours, ours_ms, peer, peer_ms, speedup}] in the order the groups appear."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        if not _timed(row):
            continue
        impl = str(row.get("impl", ""))
        key = (row.get("op"), row.get("shape"), row.get("dtype"))
        group = groups.setdefault(key, {"ours": [], "peers": []})
        if impl.startswith("ours:"):
            if "rel_err" in row and row.get("ok") is not False:
                group["ours"].append(row)
        elif not impl.startswith("model"):
            group["peers"].append(row)
    out = []
    for (op, shape, dtype), group in groups.items():
        if not group["ours"] or not group["peers"]:
            continue
        ours = min(group["ours"], key=lambda r: r["ms"])
        peer = min(group["peers"], key=lambda r: r["ms"])
        out.append({"op": op, "shape": shape, "dtype": dtype, "ours": ours["impl"], "ours_ms": ours["ms"],
                    "peer": peer["impl"], "peer_ms": peer["ms"], "speedup": peer["ms"] / ours["ms"]})
    return out


def speedup_chart(rows: list[dict], path: str | Path, title: str) -> Path:
    """A horizontal bar chart (log scale, bars from 1x) of `speedups(rows)` written as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--chart needs matplotlib: pip install 'cosmos-kernels[bench]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    data = speedups(rows)
    if not data:
        raise ValueError("no (op, shape) has both a timed row of ours and a timed peer: nothing to chart")
    labels = [f"{d['op']} {d['shape']} {d['dtype']}\n{d['ours']} vs {d['peer']}" for d in data]
    values = [d["speedup"] for d in data]
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(data) + 1.6))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    # bars grow from 1x: right of the line ours is faster, left of it slower
    ax.barh(range(len(data)), [v - 1.0 for v in values], left=1.0, color=colors)
    ax.set_yticks(range(len(data)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(min(values), 1.0) / 1.6, max(max(values), 1.0) * 1.6)
    ax.axvline(1.0, color="black", linewidth=1)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    ax.set_xlabel("speedup of ours over the best peer (best peer time / our time; > 1: ours faster)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
