"""Experiment tracking: TensorBoard always, Weights & Biases beside it where a run asks (``--wandb``).

wandb is optional (``pip install 'robocl[wandb]'``) and imported only when asked for; ``WANDB_MODE=offline``
records runs locally (``<run_dir>/wandb/``) for ``wandb sync`` later, without an account.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


def start_wandb(run_dir: Path, stage: str, *, project: str, config: dict[str, Any]) -> Any:
    """A wandb run for one stage of the run in ``run_dir``: named ``<run>/<stage>``, grouped by run, its files
    under ``run_dir``."""
    import wandb

    return wandb.init(
        project=project, name=f"{run_dir.name}/{stage}", group=run_dir.name, dir=str(run_dir), config=config
    )


class Scalars(SummaryWriter):
    """A TensorBoard writer whose scalars also go to a wandb run, when there is one."""

    def __init__(self, log_dir: Path, *, wandb_run: Any = None, **kwargs: Any) -> None:
        super().__init__(str(log_dir), **kwargs)
        self.wandb_run = wandb_run

    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None, **kwargs: Any) -> None:
        super().add_scalar(tag, scalar_value, global_step, **kwargs)
        if self.wandb_run is not None:
            self.wandb_run.log({tag: scalar_value}, step=global_step)
