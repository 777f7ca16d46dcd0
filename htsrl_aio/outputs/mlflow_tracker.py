"""MLflow: the settings as params, the versions as tags, every update's metrics at its global_step,
config.json and summary.json as artifacts.

By default the store is a SQLite database in the run directory (mlflow.db, artifacts in mlartifacts/):
MLflow's file store (./mlruns) refuses to start unless told to, as it is no longer maintained.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from htsrl_aio import checkpoint
from htsrl_aio.config import TrainConfig
from htsrl_aio.outputs.run_dir import CONFIG, SUMMARY
from htsrl_aio.outputs.trackers import scalars

EXPERIMENT = "htsrl-aio"  # unless MLFLOW_EXPERIMENT_NAME names another, as for MLflow's own API
DATABASE = "mlflow.db"
ARTIFACTS = "mlartifacts"
_BATCH = 100  # params per request: MLflow's limit
_PARAM_CHARS = 6000  # MLflow's longest param value


class MlflowTracker:
    """One session of an MLflow run (`--mlflow`); `continued` names the run a resume goes on with."""

    key = "mlflow"
    title = "MLflow"
    extra = "mlflow"

    def __init__(self, cfg: TrainConfig, run_dir: Path, config_json: dict[str, Any],
                 continued: str | None) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self._run_dir = run_dir.resolve()
        self._client = MlflowClient(tracking_uri=cfg.mlflow_uri or f"sqlite:///{self._run_dir / DATABASE}")
        if continued is not None:
            self.run_id = continued
            self._client.update_run(continued, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
            experiment = self._client.get_experiment_by_name(name)
            # The run directory's own database keeps its artifacts beside it; a server decides its own.
            location = (self._run_dir / ARTIFACTS).as_uri() if cfg.mlflow_uri is None else None
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self._client.create_experiment(name, artifact_location=location))
            self.run_id = self._client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            # Params cannot change once logged: a resumed run keeps those of its start.
            params = [Param(key, value) for key, value in _flat({k: v for k, v in config_json.items()
                                                                  if k != "versions"}).items()]
            for start in range(0, len(params), _BATCH):
                self._client.log_batch(self.run_id, params=params[start:start + _BATCH])
        # Tags may change: they say what this session ran on.
        tags = {f"versions.{key}": value for key, value in config_json.get("versions", {}).items()}
        self._client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])
        self._client.log_artifact(self.run_id, str(self._run_dir / CONFIG))

    @staticmethod
    def enabled(cfg: TrainConfig) -> str | None:
        return "--mlflow" if cfg.mlflow else None

    @staticmethod
    def modules(cfg: TrainConfig) -> tuple[str, ...]:
        # The default store is a database, which MLflow reaches through SQLAlchemy and sets up with Alembic.
        return ("mlflow",) if cfg.mlflow_uri is not None else ("mlflow", "sqlalchemy", "alembic")

    @staticmethod
    def destination(cfg: TrainConfig) -> str:
        # The run directory's own database wherever the directory is (it may be moved or copied).
        return cfg.mlflow_uri or DATABASE

    def write(self, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, metrics["global_step"])
                                                     for key, value in scalars(metrics).items()])

    def close(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            self._client.set_tag(self.run_id, "final_checkpoint", str(self._run_dir / checkpoint.FINAL))
            self._client.log_artifact(self.run_id, str(self._run_dir / SUMMARY))
        # KILLED: stopped early, resumable; a resume sets it RUNNING again.
        self._client.set_terminated(self.run_id, "FINISHED" if summary is not None else "KILLED")


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: `user_settings.lr`, lists and None as JSON."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        # MLflow takes letters, digits, _ - . / and spaces in a param's name (env_kwargs may hold others).
        name = prefix + re.sub(r"[^\w\-. /]", "_", str(key))
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = (value if isinstance(value, str) else json.dumps(value, default=str))[:_PARAM_CHARS]
    return flat
