"""`cosmos bench SUITE`: the benchmark suites (kernels; train-step joins with the MFU tools; sample-step)."""
from __future__ import annotations

import argparse
import importlib

SUITES = {"kernels": "bench.kernels", "train-step": "bench.train_step", "sample-step": "bench.sample_step"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="suite", required=True)
    for name, module in SUITES.items():
        m = importlib.import_module(module)
        m.add_arguments(sub.add_parser(name, allow_abbrev=False, help=(m.__doc__ or "").split("\n")[0]))


def run(args) -> int:
    return importlib.import_module(SUITES[args.suite]).run(args)
