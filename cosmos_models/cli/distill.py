"""`cosmos distill`: rCM distillation of a trained teacher (cosmos_models.distill.distiller)."""
from __future__ import annotations

import argparse

from cosmos_models.cli.run_flags import add_run_arguments, config_from_args, run_to_end
from cosmos_models.distill import distiller as _distiller
from cosmos_models.distill import rcm as distill
from cosmos_models.distill.distiller import CONDITIONS, DistillConfig, Distiller


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _distiller.__doc__.split("\n\n", 1)[1]
    d = DistillConfig()
    r = distill.RCMConfig()
    a = parser.add_argument
    a("--teacher", required=True, help="teacher weights (ours, official or diffusers names; EMA preferred), e.g. "
                                       "<train run>/ema.safetensors")
    add_run_arguments(parser, d, what="iterations (student and fake-score updates together)",
                      log="distill_log.jsonl", outputs="student*.safetensors")
    a("--condition", default=d.condition, choices=CONDITIONS,
      help="conditioning frames while distilling: none (Text2World, as rCM), final (0/1/2 latent frames), early")
    a("--negative-prompt-embedding", default=None,
      help="unconditional text embedding of the teacher's CFG (default: the zeroed embedding of text dropout)")
    a("--ema-sigma-rel", type=float, default=d.ema_sigma_rel, help="power EMA width of the student")
    a("--guidance", type=float, default=d.guidance, help="teacher CFG, official form (rCM: 5)")
    a("--tangent-warmup", type=int, default=None, help=f"iterations of tangent warmup (rCM {r.tangent_warmup}; "
                                                       "default: min(1000, steps/4))")
    a("--student-lr", type=float, default=d.student_lr)
    a("--fake-lr", type=float, default=d.fake_lr)
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--loss-scale-dmd", type=float, default=d.loss_scale_dmd, help="weight of the DMD term (0: sCM only)")
    a("--student-update-freq", type=int, default=d.student_update_freq)
    a("--max-simulation-steps", type=int, default=d.max_simulation_steps)
    a("--p-mean", type=float, default=d.p_mean, help="sCM times: ln sigma ~ N(p_mean, p_std^2)")
    a("--p-std", type=float, default=d.p_std)


def run(args) -> int:
    return run_to_end("distill", Distiller, config_from_args(DistillConfig, args))
