"""Test helpers: a RolloutScheduler around a FakePool (recording what the learner saw), polling, and a
crashed run directory."""

from __future__ import annotations

import copy
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fake_pool import FakePool

from htsrl_aio.config import TrainConfig
from htsrl_aio.models import MLPActorCritic
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.learner import Learner, ThreadLearner
from htsrl_aio.runtime.scheduler import RolloutScheduler
from htsrl_aio.runtime.storage import RolloutStorage
from htsrl_aio.runtime.tickets import TicketSampler


class RecordingLearner(Learner):
    """A real learner that also keeps a copy of every rollout and of the parameters it updated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, Any]] = []

    def update(self, storage: RolloutStorage) -> dict[str, float]:
        self.seen.append({
            "rollout": storage.rollout,
            "obs": storage.obs.copy(),
            "actions": storage.actions.copy(),
            "terminated": storage.terminated.copy(),
            "truncated": storage.truncated.copy(),
            "truncated_obs": dict(storage.truncated_obs),
            "version": self.version,
            "behaviour_version": self.behaviour_version,
            "behaviour_params": copy.deepcopy(self.behaviour.state_dict()),
        })
        return super().update(storage)


@dataclass
class Harness:
    scheduler: RolloutScheduler
    pool: FakePool
    learner: RecordingLearner
    inference: BatchedInference
    metrics: list[dict[str, Any]] = field(default_factory=list)


def make_harness(**overrides: Any) -> Harness:
    cfg = TrainConfig(**{"num_envs": 4, "rollout": 5, "total_steps": 4 * 5 * 6, "minibatches": 2,
                         "epochs": 1, **overrides}).resolved()
    model = MLPActorCritic(4, 2, (8,))
    storages = (RolloutStorage.zeros(0, cfg.num_envs, cfg.rollout, (4,)),
                RolloutStorage.zeros(1, cfg.num_envs, cfg.rollout, (4,)))
    final_obs = np.zeros((cfg.num_envs, 4), np.float32)
    pool = FakePool([s.obs for s in storages], final_obs)
    learner = RecordingLearner(cfg, model, copy.deepcopy(model))
    inference = BatchedInference(copy.deepcopy(model), TicketSampler(cfg.seed, cfg.num_envs, cfg.rollout),
                                 cfg.max_batch, (4,), np.dtype(np.float32))
    harness = Harness(None, pool, learner, inference)  # type: ignore[arg-type]
    harness.scheduler = RolloutScheduler(cfg, pool, storages, final_obs, inference, ThreadLearner(learner),
                                         harness.metrics.append)
    return harness


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def as_if_crashed_after(run_dir: Path, copy: Path) -> Path:
    """The run directory a crash (power cut, OOM kill) would have left: no summary, no final checkpoint."""
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    (copy / "checkpoint.pt").unlink()
    return copy


def default_sigint() -> None:
    """Popen preexec_fn: let the child take Ctrl-C even when the test runner ignores SIGINT (a shell
    starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
