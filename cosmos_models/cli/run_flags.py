"""The flags every run command shares (`cosmos train`, `cosmos distill`): one definition of the
RunConfig settings (cosmos_models.training.runner), one way from flags to a config, one way to run."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import cosmos_models as cm
from cosmos_models.errors import ProcessesLost
from cosmos_models.training import sac
from cosmos_models.training.runner import PRECISIONS, RunConfig

KERNEL_BACKEND_HELP = ("kernel backends: one for every op (triton|cuda|torch), per op (flash_attention=torch,"
                       "adaln_modulate=cuda) or both (triton,flash_attention=torch); default: the dispatch default "
                       "(the same spelling as COSMOS_KERNELS_BACKEND)")


def add_kernel_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel-backend", default=None, metavar="SPEC", help=KERNEL_BACKEND_HELP)


def add_run_arguments(parser: argparse.ArgumentParser, d: RunConfig, *, what: str, log: str, outputs: str) -> None:
    """The shared flags, with `d`'s defaults; `what` names a step ("optimizer steps", "iterations")."""
    a = parser.add_argument
    a("--config", default=d.config, help=f"model config ({', '.join(cm.configs())})" +
      ("" if d.config else "; default: the one the teacher file records"))
    a("--data", default=None, help="folder of clips (videos + <name>.pt text embeddings, optional <name>.latent.pt); "
                                   "tiny configs without it use generated clips under --out/data")
    a("--out", default=d.out, help=f"run folder: checkpoints/, {log}, {outputs}")
    a("--steps", type=int, default=d.steps, help=f"total {what}")
    a("--batch", type=int, default=d.batch, help="video clips per data-parallel group per step")
    a("--resolution", default=None, help="256p, 480p, 720p or HxW (default: the config's)")
    a("--aspect-buckets", action="store_true",
      help="resize each clip to the official bucket of its aspect ratio (16:9, 4:3, 1:1, 3:4, 9:16 at --resolution) "
           "instead of center-cropping every clip to --resolution; a batch holds one bucket")
    a("--frames", type=int, default=None, help="pixel frames per clip, 4k+1 (default: the config's)")
    a("--cp", type=int, default=d.cp, help="context-parallel (Ulysses) group size")
    a("--cp-overlap-chunks", type=int, default=d.cp_overlap_chunks,
      help="split the heads into N chunks whose all-to-all overlaps the previous chunk's attention "
           "(1: one exchange; opt-in until measured on a GPU)")
    a("--hsdp-replicate", type=int, default=d.hsdp_replicate, help="FSDP replicas (hybrid sharding); 1: full shard")
    a("--sac", default=None, choices=sorted(sac.POLICIES),
      help="activation checkpointing policy (default: none for tiny configs, else predict2_2b_720_aggressive)")
    a("--precision", default=None, choices=sorted(PRECISIONS), help="compute dtype (default: bf16 on GPU, fp32 on CPU)")
    a("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_kernel_backend(parser)
    a("--seed", type=int, default=d.seed)
    a("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (and always at the end)")
    a("--keep-last", type=int, default=d.keep_last, help="keep only the newest N checkpoints (0: all)")
    a("--log-every", type=int, default=d.log_every, help="log every N steps")
    a("--resume", action="store_true", help="continue from the newest checkpoint under --out (if any)")
    a("--vae", default=None, help="diffusers AutoencoderKLWan folder for clips without cached latents "
                                  "(tiny configs: the random tiny VAE)")
    a("--cache-latents", action="store_true", help="encode and cache missing latents of --data first")
    a("--num-workers", type=int, default=d.num_workers, help="data-loader worker processes")
    a("--synthetic-clips", type=int, default=d.synthetic_clips, help="clips to generate when --data is omitted")
    a("--dist-timeout", type=float, default=d.dist_timeout,
      help="collective timeout in seconds: how long the processes wait for one that died or hangs")
    a("--allow-change", action="append", default=[], metavar="KEY",
      help="--resume: accept this change of the run's identity recorded in OUT/run.json (config, data, seed, "
           "batch, resolution, frames, ...); repeatable")
    a("--max-bad-steps", type=int, default=d.max_bad_steps,
      help="skip at most this many steps in a row whose loss or gradient is not finite, then stop")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    a("--text-encoder", default=d.text_encoder, metavar="FOLDER",
      help="--data in the official layout (videos/ + metas/<name>.txt): embed the captions not embedded yet with "
           "this Reason1 encoder first (or run cosmos embed --data DIR once)")
    a("--log-to", default=d.log_to, metavar="tensorboard,wandb",
      help="also log to TensorBoard (<out>/tensorboard) and/or Weights & Biases")
    a("--wandb-project", default=d.wandb_project, help="the W&B project of --log-to wandb")


def config_from_args(cls, args):
    """A config dataclass (TrainConfig, DistillConfig) from parsed flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def run_to_end(command: str, make_run, cfg) -> int:
    """Build the run, train it, release it. Expected failures (a bad setting, a folder in use, a
    stop signal, divergence) propagate to the `cosmos` command, which prints them as one line."""
    run = make_run(cfg)
    try:
        run.train()
    except ProcessesLost as exc:
        # another process is gone: tearing the process group down (or exiting the interpreter with
        # gloo's threads waiting on it) can hang or abort, so say what happened and leave at once
        print(f"cosmos {command}: error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(exc.exit_code)
    except BaseException:
        run.close()
        raise
    run.close(barrier=True)
    return 0
