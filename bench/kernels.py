"""Every kernel against its reference and its peers, in one run (`cosmos selfcheck`,
`cosmos bench kernels`, `python -m bench.kernels`).

Each family has a module bench/<family>.py with `run(device, quick) -> list[dict]`; a row has at
least op, shape, dtype, impl (ours: the backend; peers: e.g. "torch.compile", "sdpa-flash"),
ms, and a relative error against the reference where the row is one of ours. Rows of ours whose
error exceeds the DESIGN.md threshold fail the run (exit 1): this is also the self-check.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

from bench.common import environment, print_table, write_json

FAMILIES = ["adaln", "ulysses", "rope", "flash_attention", "neighborhood_attention", "distill"]  # each kernel family adds its bench module here
COLUMNS = ["op", "shape", "dtype", "impl", "ms", "GB/s", "TFLOP/s", "vs_peer", "rel_err", "ok"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", default=None,
                   help="small shapes (the default on CPU; full paper shapes on GPU)")
    p.add_argument("--only", default="", help="comma-separated families: " + ",".join(FAMILIES))
    p.add_argument("--out", default=None, help="JSON output (default bench/results/kernels-<device>.json on GPU)")
    p.add_argument("--chart", default=None, help="PNG bar chart of ours vs the best peer per op and shape")


def run(args) -> int:
    device = torch.device(args.device)
    quick = args.quick if args.quick is not None else device.type != "cuda"
    families = [f for f in FAMILIES if not args.only or f in args.only.split(",")]
    env = environment(device)
    print(f"device: {env['device']}  ({env['figures']})")
    from cosmos_kernels import backend_table
    table = backend_table(device)
    print("backends (cosmos_kernels/dispatch.py OPS; override: --kernel-backend / COSMOS_KERNELS_BACKEND SPEC):")
    print_table(table, list(table[0]))
    rows = []
    out = args.out or (f"bench/results/kernels-{device.type}.json" if device.type == "cuda" else None)
    try:
        for fam in families:
            module = importlib.import_module(f"bench.{fam}")
            module.run(device, quick, rows)
            if out:  # what is measured so far survives a later failure or a kill
                write_json(out, {"environment": env, "quick": quick, "rows": rows, "last_family_done": fam})
    except BaseException as exc:
        # the rows measured so far are still written, with what stopped the run
        if out:
            write_json(out, {"environment": env, "quick": quick, "rows": rows,
                             "error": f"{type(exc).__name__}: {exc}"})
        raise
    print_table(rows, COLUMNS)
    if out:
        print(f"wrote {write_json(out, {'environment': env, 'quick': quick, 'rows': rows})}")
    if args.chart:
        from bench.chart import speedup_chart
        title = f"cosmos bench kernels on {env['device']}" + (" (CPU figures)" if device.type != "cuda" else "")
        print(f"wrote {speedup_chart(rows, args.chart, title)}")
    bad = [r for r in rows if r.get("ok") is False]
    if bad:
        print(f"{len(bad)} kernel row(s) exceed their accuracy threshold", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
