"""Where a run's numbers go besides <out>/<name>_log.jsonl: TensorBoard and Weights & Biases (`--log-to`).

    cosmos train ... --log-to tensorboard          # <out>/tensorboard/, then: tensorboard --logdir <out>
    cosmos train ... --log-to tensorboard,wandb    # + a W&B run (project --wandb-project, id kept in <out>/wandb_id)

Each log window (every --log-every steps) writes the same numbers as the JSONL record (loss, lr,
grad norm, step time, tokens/s, ...: every finite number in it) under `<name>/<key>` at its step, from
rank 0 only. The packages are the well-kept ones users watch runs with (torch.utils.tensorboard's
SummaryWriter, wandb), imported only when asked for; a missing one is one line naming the pip command.
A resumed run appends to the same TensorBoard folder and resumes the same W&B run (its id is stored in
<out>/wandb_id), so one curve covers the whole run.
"""
from __future__ import annotations

import math
import numbers
import os

from cosmos_models._deps import require

KINDS = ("tensorboard", "wandb")


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """'tensorboard,wandb' -> ('tensorboard', 'wandb'); '' / None -> ()."""
    if not text:
        return ()
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"--log-to {text!r}: unknown logger(s) {unknown}; expected a comma-separated subset of {KINDS}")
    return kinds


class MetricLoggers:
    """The loggers of one run (rank 0 creates it; other ranks pass kinds=())."""

    def __init__(self, kinds: tuple[str, ...], out: str, name: str, *, config: dict | None = None,
                 project: str = "cosmos-kernels"):
        self.name = name
        self._writers = []
        if "tensorboard" in kinds:
            require("tensorboard", "--log-to tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(out, "tensorboard"))
            self._writers.append(self._tensorboard)
        if "wandb" in kinds:
            wandb = require("wandb", "--log-to wandb")
            id_file = os.path.join(out, "wandb_id")
            run_id = open(id_file).read().strip() if os.path.isfile(id_file) else wandb.util.generate_id()
            self._wandb = wandb.init(project=project, id=run_id, resume="allow", dir=out,
                                     name=os.path.basename(os.path.abspath(out)), config=config or {})
            with open(id_file, "w") as f:
                f.write(run_id + "\n")
            self._writers.append(self._wandb_log)

    @staticmethod
    def scalars(record: dict) -> dict[str, float]:
        """The finite numbers of a log record (booleans, lists and strings left out)."""
        return {k: float(v) for k, v in record.items()
                if isinstance(v, numbers.Real) and not isinstance(v, bool) and k != "step" and math.isfinite(v)}

    def log(self, step: int, record: dict) -> None:
        values = self.scalars(record)
        for write in self._writers:
            write(step, values)

    def log_media(self, step: int, name: str, strip, video_path: str) -> None:
        """A preview (training/previews.py): `strip` (3, H, W) uint8 frames to TensorBoard as an image,
        the mp4 at `video_path` to W&B as a video."""
        if hasattr(self, "_tb"):
            self._tb.add_image(f"{self.name}/{name}", strip, step, dataformats="CHW")
            self._tb.flush()
        if hasattr(self, "_wandb"):
            import wandb
            self._wandb.log({f"{self.name}/{name}": wandb.Video(video_path)}, step=step)

    def _tensorboard(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._tb.add_scalar(f"{self.name}/{key}", value, step)
        self._tb.flush()  # a killed run keeps what it logged

    def _wandb_log(self, step: int, values: dict[str, float]) -> None:
        self._wandb.log({f"{self.name}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        if hasattr(self, "_tb"):
            self._tb.close()
        if hasattr(self, "_wandb"):
            self._wandb.finish()
