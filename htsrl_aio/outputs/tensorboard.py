"""TensorBoard scalars next to metrics.jsonl, when the optional tensorboard package is installed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from htsrl_aio.outputs.run_dir import RunDirWriteError

log = logging.getLogger(__name__)

ENABLE_HINT = "TensorBoard logging is off: pip install 'htsrl-aio[tensorboard]' to enable it."


class ScalarLog:
    """Every numeric metric of an update as a scalar at its global step; a no-op when unavailable."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        """`resume_step`: a resumed run drops the events it is about to write again."""
        self._writer = None
        self.status = "off (--no-tensorboard)"
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.status = ENABLE_HINT
            log.warning(ENABLE_HINT)
            return
        try:
            self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step)
        except OSError as exc:  # the events file is written at once: a full disk shows here first
            raise RunDirWriteError(f"could not write TensorBoard events to {run_dir}: {exc.strerror or exc}; "
                                   "free disk space or make the run directory writable.") from None
        self.status = f"on: tensorboard --logdir {run_dir}"

    def write(self, metrics: dict[str, Any]) -> None:
        if self._writer is None:
            return
        step = metrics["global_step"]
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "global_step":
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
