"""The run directory: config.json, metrics.jsonl (one row per update), summary.json, checkpoints.

Everything that is replaced (config, summary, checkpoint) is written to a temporary file and renamed
into place, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from htsrl_aio import checkpoint
from htsrl_aio.config import ConfigError
from htsrl_aio.errors import HtsrlError

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
ERROR_LOG = "error.log"


class CheckpointWriteError(HtsrlError):
    """A checkpoint could not be written (disk full, no permission); earlier checkpoints are intact."""


def default_logdir(env_name: str, algo: str, mode: str, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", env_name).strip("_")
    return Path("runs") / f"{slug}-{algo}-{mode}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._metrics = None

    @classmethod
    def create(cls, path: Path) -> RunDirectory:
        """Make a fresh run directory; refuse one that already holds a run, so nothing is overwritten."""
        if (path / METRICS).exists() or (path / SUMMARY).exists():
            raise ConfigError(f"run directory {path} already holds a run; pass a new --logdir or remove it.")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {path}: {exc.strerror}.") from None
        run = cls(path)
        run._metrics = open(path / METRICS, "w", buffering=1, encoding="utf-8")  # noqa: SIM115
        return run

    @classmethod
    def reopen(cls, path: Path, updates: int) -> RunDirectory:
        """Continue a run: metrics rows after update `updates` (written after the checkpoint) are dropped."""
        if (path / SUMMARY).exists():
            raise ConfigError(f"the run in {path} already finished (summary.json exists); nothing to resume.")
        run = cls(path)
        rows = []
        if (path / METRICS).exists():
            with open(path / METRICS, encoding="utf-8") as f:
                rows = [line for line in f if line.strip() and json.loads(line)["update"] <= updates]
        run.write_text(METRICS, "".join(rows))
        run._metrics = open(path / METRICS, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        return run

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.write_text(name, json.dumps(data, indent=2, default=str))

    def write_text(self, name: str, text: str) -> None:
        self._atomic_write(name, lambda f: f.write(text.encode()))

    def append_text(self, name: str, text: str) -> None:
        """Append to a log file (error.log); a log line is not worth an atomic rewrite."""
        with open(self.path / name, "a", encoding="utf-8") as f:
            f.write(text)

    def append_metrics(self, row: dict[str, Any]) -> None:
        assert self._metrics is not None
        self._metrics.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")

    def save_checkpoint(self, state: dict[str, Any], name: str = checkpoint.FINAL) -> None:
        """Write a checkpoint atomically; on failure raise one sentence and leave older ones untouched."""
        # Serialised in memory first: torch's zip writer turns a failed write (disk full) into an
        # unrelated-looking RuntimeError, while a plain file write reports the OSError itself.
        buffer = io.BytesIO()
        torch.save({"format": checkpoint.FORMAT, **state}, buffer)
        try:
            (self.path / name).parent.mkdir(exist_ok=True)
            self._atomic_write(name, lambda f: f.write(buffer.getbuffer()))
        except OSError as exc:
            raise CheckpointWriteError(
                f"could not write checkpoint {self.path / name}: {exc.strerror or exc}; free disk space or "
                "make the run directory writable (earlier checkpoints are intact).") from exc

    def save_periodic(self, state: dict[str, Any], update: int, keep: int) -> None:
        """Write checkpoints/update-<update>.pt, then delete all but the newest `keep` of them."""
        self.save_checkpoint(state, checkpoint.periodic_name(update))
        for old in checkpoint.periodic_checkpoints(self.path)[:-keep]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def _atomic_write(self, name: str, write: Any) -> None:
        target = self.path / name
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead, so every line parses with a strict reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
