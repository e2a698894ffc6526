"""`cosmos train`: flow-matching training (cosmos_models.training.trainer); torchrun for several processes."""
from __future__ import annotations

import argparse

from cosmos_models.cli.run_flags import add_run_arguments, config_from_args, run_to_end
from cosmos_models.training import trainer as _trainer
from cosmos_models.training.trainer import CONDITIONS, TIMESTEP_RECIPES, TrainConfig, Trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _trainer.__doc__.split("\n\n", 1)[1]
    d = TrainConfig()
    add_run_arguments(parser, d, what="optimizer steps", log="train_log.jsonl", outputs="ema.safetensors")
    a = parser.add_argument
    a("--image-data", default=None, help="folder of images for joint training (default: the videos' first frames)")
    a("--image-prob", type=float, default=d.image_prob, help="fraction of steps that are image batches (0: none)")
    a("--image-batch", type=int, default=None, help="images per data-parallel group (default: --batch x --cp)")
    a("--lr", type=float, default=None, help="peak learning rate (default: the config's)")
    a("--warmup", type=int, default=None, help="warm-up steps (default: the config's, at most --steps/5)")
    a("--final-lr-ratio", type=float, default=d.final_lr_ratio, help="lr at the last step / peak lr")
    a("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the config's, 1e-3)")
    a("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (official 0.1; 0: off)")
    a("--ema-sigma-rel", type=float, default=d.ema_sigma_rel, help="power EMA width (official 0.1)")
    a("--ema-decay", type=float, default=None, help="constant EMA decay instead of the power EMA (e.g. 0.9999)")
    a("--init", default=None, help="initial weights (official, diffusers or ours) instead of random init")
    a("--text-dropout", type=float, default=d.text_dropout, help="probability of a zeroed text embedding (CFG)")
    a("--condition", default=d.condition, choices=CONDITIONS,
      help="conditioning frames: final stage (0/1/2 latent frames), early (1 or 5 pixel frames), none")
    a("--timesteps", default=d.timesteps, choices=TIMESTEP_RECIPES,
      help="official (shift 5, 1000-step grid) or paper (shift by resolution, 5%% from the top 2%%)")
    a("--shift", type=float, default=None, help="timestep shift β (default: per --timesteps)")
    a("--loss-scale", type=float, default=d.loss_scale,
      help="multiply the flow-matching loss (official: 1; the logged loss and clipping see the scaled loss)")
    a("--lora", default=None, metavar="RANK[:ALPHA]",
      help="train LoRA adapters (peft) on the block projections only, the rest frozen (alpha default = rank); "
           "<out>/lora.safetensors holds the adapters, <out>/ema.safetensors the merged weights")
    a("--lora-targets", default=None, metavar="q_proj,k_proj,...",
      help="the block projections to adapt (default: q_proj,k_proj,v_proj,output_proj,layer1,layer2)")
    a("--control", default=None, metavar="edge,depth,...",
      help="Transfer models: the control modalities trained (default edge; edge / blur are computed from each clip, "
           "depth / seg read from DATASET/depth/<name>.mp4, DATASET/seg/<name>.mp4 or <name>_depth.mp4 beside it)")
    a("--sample-every", type=int, default=d.sample_every, metavar="N",
      help="every N steps a short text2world video from the EMA weights to <out>/samples/ (and --log-to); 0: off")
    a("--sample-prompts", type=int, default=d.sample_prompts,
      help="previews per --sample-every: the text of the first N clips of the data (a fixed set)")
    a("--sample-steps", type=int, default=d.sample_steps, help="solver steps of a preview")
    a("--overfit-one-batch", dest="overfit_batch", action="store_true",
      help="debug: train on the first batch with the same noise every step")


def run(args) -> int:
    return run_to_end("train", Trainer, config_from_args(TrainConfig, args))
