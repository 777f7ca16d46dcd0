"""Experiment trackers behind one interface: TensorBoard (tensorboard.py), Weights & Biases
(wandb_tracker.py) and MLflow (mlflow_tracker.py).

`MetricsSinks` sends every update's metrics row to each tracker, and the finished run's summary when it
closes them. Each tracker owns its own connection and its run there. The W&B and MLflow runs a run
directory logs to are kept in its trackers.json, so `--resume` continues the same tracker runs: rows
they already hold (written after the checkpoint the run resumes from) are not sent again, as neither
can take back a step once logged (TensorBoard's writer purges them instead, see tensorboard.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Protocol

from htsrl_aio.config import TrainConfig
from htsrl_aio.errors import ConfigError
from htsrl_aio.outputs.run_dir import TRACKERS, RunDirectory

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def write(self, metrics: dict[str, Any]) -> None:
        """One update's metrics row, as metrics.jsonl has it."""

    def close(self, summary: dict[str, Any] | None) -> None:
        """End this session: `summary` is summary.json's content when the run finished, None when it
        stopped (and may resume)."""


class TrackerRun(Tracker, Protocol):
    """A tracker that logs to a run of its own service (W&B, MLflow), opened by
    `Kind(cfg, run_dir, config_json, continued)`, which continues the run `continued` names."""

    run_id: str


class TrackerKind(Protocol):
    key: str  # its entry in trackers.json
    title: str  # its name in messages
    extra: str  # the htsrl-aio extra that installs it

    @staticmethod
    def enabled(cfg: TrainConfig) -> str | None:
        """The flag that turns it on, where given; None where it is off."""

    @staticmethod
    def modules(cfg: TrainConfig) -> tuple[str, ...]:
        """The packages it needs with these settings."""

    @staticmethod
    def destination(cfg: TrainConfig) -> str:
        """Where it logs: a resume that logs elsewhere starts a new tracker run there."""

    def __call__(self, cfg: TrainConfig, run_dir: Path, config_json: dict[str, Any],
                 continued: str | None) -> TrackerRun: ...


@dataclasses.dataclass(frozen=True)
class RecordedRun:
    """A tracker run as trackers.json keeps it."""

    run_id: str
    destination: str
    # The global_step of the last row the tracker run may hold: a resumed session sends it later ones only.
    logged_through: int | None = None


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a metrics row, but its step (global_step), which trackers take apart."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "global_step"}


def _kinds() -> tuple[TrackerKind, ...]:
    # Imported here: each tracker's module imports this one for `scalars`.
    from htsrl_aio.outputs.mlflow_tracker import MlflowTracker
    from htsrl_aio.outputs.wandb_tracker import WandbTracker

    return (WandbTracker, MlflowTracker)


def require_packages(cfg: TrainConfig) -> None:
    """Refuse, in one sentence and before anything starts, a tracker whose packages are not installed."""
    for kind in _kinds():
        flag = kind.enabled(cfg)
        if flag is not None and not all(_installed(module) for module in kind.modules(cfg)):
            raise ConfigError(f"{flag} needs the {kind.extra} extra: pip install 'htsrl-aio[{kind.extra}]' "
                              f"(or drop {flag}).")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules holds None for it: importing it fails
        return False


def open_trackers(cfg: TrainConfig, run_dir: RunDirectory, config_json: dict[str, Any],
                  resumed: bool) -> list[Tracker]:
    """The W&B and MLflow trackers `cfg` asks for, each continuing the tracker run trackers.json names
    when the run resumes and logs to the same place, else starting one; trackers.json records them. A
    tracker that cannot start (no network, no login) is one warning, and the run goes on without it."""
    kinds = [kind for kind in _kinds() if kind.enabled(cfg) is not None]
    if not kinds:
        return []
    recorded = _recorded(run_dir.path) if resumed else {}
    opened: list[Tracker] = []
    for kind in kinds:
        destination = kind.destination(cfg)
        previous = recorded.get(kind.key)
        continued = previous if previous is not None and previous.destination == destination else None
        try:
            tracker = kind(cfg, run_dir.path, config_json, None if continued is None else continued.run_id)
        except Exception as exc:  # whatever the tracker's client raises: the run matters more
            log.warning("%s logging is off: its run could not start (%s: %s); the run goes on without it.",
                        kind.title, type(exc).__name__, exc)
            continue
        through = None if continued is None else _latest(continued.logged_through, run_dir.written_through)
        recorded[kind.key] = RecordedRun(tracker.run_id, destination, through)
        opened.append(GuardedTracker(kind.title, tracker, through))
    run_dir.write_json(TRACKERS, {key: dataclasses.asdict(run) for key, run in recorded.items()})
    return opened


def _latest(*steps: int | None) -> int | None:
    known = [step for step in steps if step is not None]
    return max(known) if known else None


def _recorded(run: Path) -> dict[str, RecordedRun]:
    """The tracker runs trackers.json names; none where it is missing or unreadable (then a resumed run
    starts new tracker runs, saying so)."""
    path = run / TRACKERS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {key: RecordedRun(**value) for key, value in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("cannot read %s (%s), so the tracker runs it named are not continued: the resumed run "
                    "logs to new ones.", path, exc)
        return {}


class GuardedTracker:
    """One tracker's session, off the event loop (a slow server never holds up the run): rows up to
    `skip_through` (its run holds them from an earlier session) are not sent again, and its first
    failure (network, disk) is one warning that ends its logging while the run goes on."""

    def __init__(self, title: str, tracker: TrackerRun, skip_through: int | None) -> None:
        self._title = title
        self._tracker = tracker
        self._skip_through = skip_through
        self._failed = False
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{title} tracker")

    def write(self, metrics: dict[str, Any]) -> None:
        if not self._failed and (self._skip_through is None or metrics["global_step"] > self._skip_through):
            self._thread.submit(self._call, self._tracker.write, dict(metrics))

    def close(self, summary: dict[str, Any] | None) -> None:
        """Send what is queued, end the tracker's session, and wait for both."""
        self._thread.submit(self._call, self._tracker.close, summary)
        self._thread.shutdown(wait=True)

    def _call(self, method: Any, *args: Any) -> None:
        if self._failed:
            return
        try:
            method(*args)
        except Exception as exc:
            self._failed = True
            log.warning("%s logging stopped: %s: %s; metrics.jsonl still gets every update.", self._title,
                        type(exc).__name__, exc)

