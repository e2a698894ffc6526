"""The `cosmos` command: one thin module per command (parse the flags, call the library, print).

Each command module provides `add_arguments(parser)` and `run(args) -> int`; only the chosen one is
imported. `cosmos selfcheck` and `cosmos bench` are served by bench/ (the benchmarks sit on top of
everything): the table below names their modules, which are imported by name when chosen, so the
library never imports bench/.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

COMMANDS = {
    "selfcheck": ("bench.kernels", "check and time every kernel against its reference on this device"),
    "bench": ("bench.cli", "benchmarks: kernels, train-step, sample-step"),
    "train": ("cosmos_models.cli.train", "flow-matching training (torchrun for several processes)"),
    "distill": ("cosmos_models.cli.distill", "rCM timestep distillation of a trained teacher"),
    "sample": ("cosmos_models.cli.sample", "generate videos (text/image/video2world, transfer, multiview, action)"),
    "embed": ("cosmos_models.cli.embed", "prompts to text-embedding files (the Reason1 encoder)"),
    "control": ("cosmos_models.cli.control", "Transfer2.5 control videos (edge, blur, depth, seg) from a video"),
    "export": ("cosmos_models.cli.export", "merge a LoRA adapter into a checkpoint (one safetensors file)"),
    "mfu": ("cosmos_models.cli.mfu", "record / check MFU baselines"),
    "tune": ("cosmos_models.cli.tune", "tune the attention kernels' tiles and variants on this GPU (a cache they read)"),
}


# ValueError covers the library's argument checks and unreadable or mismatched weight files
# (cosmos_models.nets.weight_files.WeightFileError); OSError the missing, unreadable or unwritable
# files (a full disk too); ImportError the missing optional packages; RunError the failures of a run
# (cosmos_models.errors: a folder in use, a changed config, divergence, lost processes, ...)
EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) if str(exc) else type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cosmos COMMAND [options]   (cosmos COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _data_warnings_as_lines(name: str):
    """A skipped data file is one line (`cosmos train: warning: skipping PATH: why`), from rank 0 only
    (every rank reads the same list of files); other warnings keep Python's format. Returns the
    previous `warnings.showwarning` (main puts it back when the command ends)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ != "DataWarning":
            return previous(message, category, filename, lineno, file, line)
        if _rank() == 0:
            print(f"cosmos {name}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    return previous


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cosmos: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    debug = "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    previous_showwarning = _data_warnings_as_lines(name)
    try:
        module = importlib.import_module(COMMANDS[name][0])
        parser = argparse.ArgumentParser(prog=f"cosmos {name}", description=COMMANDS[name][1], allow_abbrev=False,
                                         epilog="--debug (any command): show the traceback of an error")
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(rest)) or 0)
    except BaseException as exc:
        # what a user can cause and fix (a bad value, a missing or unreadable file, a missing optional
        # package, a run folder in use, a diverged run, a full disk, out of GPU memory, a lost process):
        # one line saying what and what to do; --debug for the traceback
        from cosmos_models.errors import ProcessesLost, RunError, describe_oom, is_oom

        if debug or isinstance(exc, SystemExit):
            raise
        if isinstance(exc, RunError):
            if _rank() == 0 or isinstance(exc, ProcessesLost):  # each rank sees its own lost peers
                print(f"cosmos {name}: {exc.prefix}{_one_line(exc)}", file=sys.stderr)
            return exc.exit_code
        if is_oom(exc):
            print(f"cosmos {name}: error: {describe_oom(exc, name)}", file=sys.stderr)
            return 2
        if isinstance(exc, KeyboardInterrupt):
            print(f"cosmos {name}: interrupted", file=sys.stderr)
            return 130
        if isinstance(exc, EXPECTED_ERRORS):
            where = f" (rank {_rank()})" if _rank() else ""
            print(f"cosmos {name}{where}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.showwarning = previous_showwarning
