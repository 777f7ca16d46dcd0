"""Test helpers: a RolloutScheduler around a FakePool (recording what the learner saw), polling, and a
crashed run directory."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from fake_pool import FakePool

from htsrl_aio.config import TrainConfig
from htsrl_aio.distributions import make_distribution
from htsrl_aio.envs.factory import EnvSpec
from htsrl_aio.models import ActorCritic
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.learner import Learner, ThreadLearner
from htsrl_aio.runtime.scheduler import RolloutScheduler
from htsrl_aio.runtime.storage import RolloutStorage, storage_layout
from htsrl_aio.runtime.tickets import TicketNoise


def vector_spec(action_space: gym.Space) -> EnvSpec:
    """Four float observations and the given actions."""
    return EnvSpec.from_spaces(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), action_space)


# Four float observations, two actions: the spaces of the tests' own envs and of the fake pool.
VECTOR_SPEC = vector_spec(gym.spaces.Discrete(2))


def small_model(spec: EnvSpec = VECTOR_SPEC, hidden: tuple[int, ...] = (8,)) -> ActorCritic:
    return ActorCritic(spec.obs, make_distribution(spec.action), hidden)


def storage_for(spec: EnvSpec, index: int, num_envs: int, rollout_len: int) -> RolloutStorage:
    return RolloutStorage.zeros(index, storage_layout(num_envs, rollout_len, spec.obs.arrays(),
                                                      spec.action.shape, spec.action.dtype))


class RecordingLearner(Learner):
    """A real learner that also keeps a copy of every rollout and of the parameters it updated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, Any]] = []

    def update(self, storage: RolloutStorage) -> dict[str, float]:
        self.seen.append({
            "rollout": storage.rollout,
            "obs": storage.obs["obs"].copy(),
            "actions": storage.actions.copy(),
            "terminated": storage.terminated.copy(),
            "truncated": storage.truncated.copy(),
            "bootstrap_values": storage.bootstrap_values.copy(),
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
    cfg = cfg.fitted_to_model(cnn=False, rows=cfg.num_envs)  # as assembly fits it to the probed env
    model = small_model()
    storages = tuple(storage_for(VECTOR_SPEC, i, cfg.num_envs, cfg.rollout) for i in range(2))
    final_obs = np.zeros((cfg.num_envs, 4), np.float32)
    pool = FakePool([s.obs["obs"] for s in storages], final_obs)
    distribution = make_distribution(VECTOR_SPEC.action)
    learner = RecordingLearner(cfg.learner_settings(), model, copy.deepcopy(model), distribution)
    inference = BatchedInference(copy.deepcopy(model), distribution,
                                 TicketNoise(cfg.seed, cfg.num_envs, cfg.rollout), cfg.max_batch,
                                 VECTOR_SPEC.obs.arrays())
    harness = Harness(None, pool, learner, inference)  # type: ignore[arg-type]
    harness.scheduler = RolloutScheduler(cfg, pool, storages, {"obs": final_obs}, inference,
                                         ThreadLearner(learner), harness.metrics.append)
    return harness


# Seconds a test waits for something that must happen (a run's first update, its processes' exit): a
# bound that only catches a hang, never a slow or loaded machine (the README's suite must pass beside
# other CPU-heavy jobs). The condition, not the clock, decides when the wait ends.
HANG_S = 600.0


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metrics_rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def actions_trace(run: Path) -> list[str]:
    """Each update's actions_sha256 of a run directory."""
    return [row["actions_sha256"] for row in metrics_rows(run)]


# Where a run's envs, inference and learner can be placed without changing a bit.
PLACEMENTS: dict[str, dict[str, Any]] = {
    "one_worker": {"workers": 1},
    "three_workers": {"workers": 3, "max_batch": 3, "learner": "thread"},
    "event_loop": {"env_backend": "loop", "env_timeout": 0, "max_batch": 2},
}


def same_bits_in_every_placement(make: Callable[..., TrainConfig], root: Path, updates: int,
                                 placements: dict[str, dict[str, Any]] = PLACEMENTS) -> dict[str, Any]:
    """Train `make(run_dir, **placement)` in each of `placements`; assert the same final parameters and
    actions trace, with different actions in every update; return the first run's summary."""
    from htsrl_aio import train

    runs = {name: train(make(root / name, **placement)) for name, placement in placements.items()}
    hashes = {name: summary["final_params_sha256"] for name, summary in runs.items()}
    assert len(set(hashes.values())) == 1, hashes
    traces = [actions_trace(root / name) for name in runs]
    assert len(traces[0]) == updates and all(trace == traces[0] for trace in traces)
    assert len(set(traces[0])) == updates  # the policy acted differently each rollout
    return next(iter(runs.values()))


def signalled(argv: list[str], run: Path, sig: signal.Signals, *, group: bool = False,
              again_when: Callable[[], bool] | None = None,
              when: Callable[[], bool] | None = None) -> tuple[int, str]:
    """Start `argv` (tests/ importable), send `sig` once it has written the first row of
    `run`/metrics.jsonl, or once `when()` holds if given (and again once `again_when()` holds, if given),
    to its process group if `group` (as `timeout`, Slurm or a closed terminal send it); return its exit
    status and stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=terminal_signals, start_new_session=True)

    def send() -> None:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)

    try:
        metrics = run / "metrics.jsonl"
        wait_until(when or (lambda: metrics.exists() and metrics.read_text().count("\n") >= 1), HANG_S,
                   "the moment to signal")
        send()
        if again_when is not None:
            wait_until(lambda: again_when() or proc.poll() is not None, HANG_S, "the second signal's moment")
            send()
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    return proc.returncode, stderr


def as_if_crashed_after(run_dir: Path, copy: Path) -> Path:
    """The run directory a crash (power cut, OOM kill) would have left: no summary, no final checkpoint."""
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    (copy / "checkpoint.pt").unlink()
    return copy


def terminal_signals() -> None:
    """Popen preexec_fn: let the child take Ctrl-C and a hang-up as from a terminal even when the test
    runner ignores them (a shell starts background jobs with SIGINT ignored, `nohup` ignores SIGHUP, and
    children inherit both; the runtime rightly leaves an ignored signal ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie has exited; only its exit status is left)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


def dead_pid() -> int:
    """The pid of a process that has exited: no process here has it (until the pids wrap around)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)
