"""Where each update's metrics go: metrics.jsonl, the trackers (TensorBoard, W&B, MLflow), the progress
line, and a stream."""

from __future__ import annotations

import asyncio
from typing import Any

from htsrl_aio.outputs.progress import ProgressLine
from htsrl_aio.outputs.run_dir import RunDirectory
from htsrl_aio.outputs.trackers import Tracker

END_OF_RUN = None  # what a stream receives after the last update


class MetricsSinks:
    def __init__(self, run_dir: RunDirectory, trackers: list[Tracker]) -> None:
        self._run_dir = run_dir
        self._trackers = list(trackers)
        self._summary: dict[str, Any] | None = None
        self._progress: ProgressLine | None = None
        self._stream: asyncio.Queue[dict[str, Any] | None] | None = None

    def add_progress(self, progress: ProgressLine) -> None:
        self._progress = progress

    def add_trackers(self, trackers: list[Tracker]) -> None:
        self._trackers += trackers

    def stream(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of every update's metrics from now on, then END_OF_RUN. Only a consumer opens one:
        `run()` alone would otherwise keep every update's metrics for ever."""
        if self._stream is None:
            self._stream = asyncio.Queue()
        return self._stream

    def write(self, metrics: dict[str, Any]) -> None:
        # metrics.jsonl first, so no tracker holds a row metrics.jsonl lacks: a resume sends W&B and
        # MLflow only the rows after the last one metrics.jsonl had (trackers.py).
        self._run_dir.append_metrics(metrics)
        for tracker in self._trackers:
            tracker.write(metrics)
        if self._progress is not None:
            self._progress.update(metrics)
        if self._stream is not None:
            self._stream.put_nowait(metrics)

    def end(self) -> None:
        if self._stream is not None:
            self._stream.put_nowait(END_OF_RUN)

    def finish(self, summary: dict[str, Any]) -> None:
        """The run finished with `summary` (summary.json), which the trackers get as they close."""
        self._summary = summary

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
        for tracker in self._trackers:
            tracker.close(self._summary)
