"""Where each update's metrics go: metrics.jsonl, TensorBoard, the progress line, and a stream."""

from __future__ import annotations

import asyncio
from typing import Any

from htsrl_aio.outputs.progress import ProgressLine
from htsrl_aio.outputs.run_dir import RunDirectory
from htsrl_aio.outputs.tensorboard import ScalarLog

END_OF_RUN = None  # what a stream receives after the last update


class MetricsSinks:
    def __init__(self, run_dir: RunDirectory, scalars: ScalarLog) -> None:
        self._run_dir = run_dir
        self._scalars = scalars
        self._progress: ProgressLine | None = None
        self._stream: asyncio.Queue[dict[str, Any] | None] | None = None

    def add_progress(self, progress: ProgressLine) -> None:
        self._progress = progress

    def stream(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of every update's metrics from now on, then END_OF_RUN. Only a consumer opens one:
        `run()` alone would otherwise keep every update's metrics for ever."""
        if self._stream is None:
            self._stream = asyncio.Queue()
        return self._stream

    def write(self, metrics: dict[str, Any]) -> None:
        self._run_dir.append_metrics(metrics)
        self._scalars.write(metrics)
        if self._progress is not None:
            self._progress.update(metrics)
        if self._stream is not None:
            self._stream.put_nowait(metrics)

    def end(self) -> None:
        if self._stream is not None:
            self._stream.put_nowait(END_OF_RUN)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
        self._scalars.close()
