"""Weights & Biases: config.json as the run's config, every update's metrics at its global_step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from htsrl_aio.config import TrainConfig
from htsrl_aio.outputs.trackers import scalars


class WandbTracker:
    """One session of a W&B run (`--wandb-project`); `continued` names the run a resume goes on with."""

    key = "wandb"
    title = "W&B"
    extra = "wandb"

    def __init__(self, cfg: TrainConfig, run_dir: Path, config_json: dict[str, Any],
                 continued: str | None) -> None:
        import wandb

        # console="off": W&B would otherwise capture the terminal, where htsrl-aio's lines go.
        self._run = wandb.init(
            project=cfg.wandb_project, entity=cfg.wandb_entity, group=cfg.wandb_group,
            tags=list(cfg.wandb_tags) or None, name=run_dir.name, dir=str(run_dir), config=config_json,
            id=continued, resume="must" if continued is not None else None, allow_val_change=True,
            settings=wandb.Settings(console="off", silent=True))
        self.run_id: str = self._run.id

    @staticmethod
    def enabled(cfg: TrainConfig) -> str | None:
        return None if cfg.wandb_project is None else "--wandb-project"

    @staticmethod
    def modules(cfg: TrainConfig) -> tuple[str, ...]:
        return ("wandb",)

    @staticmethod
    def destination(cfg: TrainConfig) -> str:
        return f"{cfg.wandb_entity or ''}/{cfg.wandb_project}"

    def write(self, metrics: dict[str, Any]) -> None:
        self._run.log(scalars(metrics), step=metrics["global_step"])

    def close(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            self._run.summary.update({key: value for key, value in summary.items() if value is not None})
        # A stopped run is marked failed, until a resume continues it.
        self._run.finish(exit_code=0 if summary is not None else 1)
