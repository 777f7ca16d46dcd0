"""TensorBoard scalars next to metrics.jsonl, when the optional tensorboard package is installed: one of
the trackers (trackers.py)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from htsrl_aio.outputs.run_dir import RunDirWriteError
from htsrl_aio.outputs.trackers import scalars

log = logging.getLogger(__name__)

NEVER_S = 10**9  # the writer thread's flush interval: never, as `ScalarLog.write` flushes
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
        self._run_dir = run_dir
        try:
            # The writer's own thread flushes only when asked (`write`): a write that fails there would
            # print its traceback from that thread, where no one can catch it.
            self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step, flush_secs=NEVER_S)
        except OSError as exc:  # the events file is written at once: a full disk shows here first
            raise RunDirWriteError(f"could not write TensorBoard events to {run_dir}: {exc.strerror or exc}; "
                                   "free disk space or make the run directory writable.") from None
        self.status = f"on: tensorboard --logdir {run_dir}"

    def write(self, metrics: dict[str, Any]) -> None:
        """Write an update's scalars and flush them here; a failed write (a full disk) stops TensorBoard
        logging with one warning, and the run goes on (metrics.jsonl keeps every row)."""
        if self._writer is None:
            return
        step = metrics["global_step"]
        try:
            for key, value in scalars(metrics).items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        except OSError as exc:
            self._stop(exc)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                self._stop(exc)
            self._writer = None

    def _stop(self, exc: OSError) -> None:
        writer, self._writer = self._writer, None
        self.status = f"stopped: could not write to {self._run_dir}: {exc.strerror or exc}"
        log.warning("TensorBoard logging stopped: could not write events to %s (%s); metrics.jsonl still "
                    "gets every update.", self._run_dir, exc.strerror or exc)
        with contextlib.suppress(OSError):  # what is still buffered fails again
            assert writer is not None
            writer.close()
