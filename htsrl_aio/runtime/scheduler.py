"""The HTS-RL schedule: one collector coroutine per env, one learner coroutine, one SwapBarrier.

hts mode (the paper): every env steps at its own pace through its `rollout` steps, then waits at the
swap; the learner trains on the other storage meanwhile and waits at the swap when done. At swap g:
rollout g is complete, the learner has produced theta_g, so the storages exchange roles, the
parameters that collected rollout g become the learner's behaviour parameters, and theta_g is
published to inference. Collection of rollout g+1 (with theta_g) and learning on rollout g (which
was collected with theta_{g-1}) then run together: exactly one update of lag, whatever the timing.

sync mode (the baseline): the same coroutines, plus a barrier after every env step, and collection
waits for the learner (a second barrier, where parameters are published) before the next rollout.

Checkpoints that resume exactly are taken inside a swap, where nothing moves: every env has finished
rollout g, the learner is idle, rollout g waits in its storage to be learned. The schedule saves its
own part (`save`: episode statistics, the version that collected rollout g, and rollout g itself) and
a run resumed from one starts right after that swap (`restore`, `StartPoint.learn_first`).
`request_stop` ends the run at the next swap, after such a checkpoint: the graceful stop of a signal.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from htsrl_aio.backends.protocol import EnvBackend
from htsrl_aio.config import TrainConfig
from htsrl_aio.runtime.barrier import BarrierAborted, SwapBarrier
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.learner import LearnerHandle, wait_settled
from htsrl_aio.runtime.storage import RolloutStorage
from htsrl_aio.steps import StepTicket

EPISODE_WINDOW = 100

class BusyClock:
    """Accumulates the seconds a component spends working, to report busy fractions."""

    def __init__(self) -> None:
        self._total = 0.0
        self._since: float | None = None

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None

    def total(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._total + running


@dataclass
class StartPoint:
    """Where the schedule begins: rollout 0 of a fresh run, or the place a checkpoint was taken."""

    rollout: int = 0  # the first rollout to collect
    # Resumed inside swap `rollout - 1`: that rollout is in its storage and is learned first, and the
    # envs continue from their saved states; otherwise envs reset into the first storage.
    learn_first: bool = False
    envs_restored: bool = False
    episodes: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0
    behaviour_version: int = 0  # learn_first: the parameters that collected the rollout learned first
    env_restarts: int = 0
    team_returns: list[float] = field(default_factory=list)  # multi-agent: each episode's sum over agents
    # Multi-agent: the agent transitions swapped so far (a row whose agent left steps without one), and
    # each env's team episode still under way, (env, return so far, agents whose episode ended).
    agent_steps: int = 0
    teams_open: list[tuple[int, float, int]] = field(default_factory=list)

    @classmethod
    def of_checkpoint(cls, kind: str, parts: Mapping[str, Any], envs_restored: bool) -> StartPoint:
        """Where a run resumed from a checkpoint of `kind` with these parts continues."""
        schedule, update = parts["schedule"], int(parts["update"])
        at_swap = kind == "swap"
        # Format v2 kept the version that collected the pending rollout with the learner's parts.
        behaviour_version = schedule.get("behaviour_version", parts.get("behaviour_version", update))
        return cls(update + at_swap, learn_first=at_swap, envs_restored=at_swap and envs_restored,
                   episodes=schedule["episodes"], episode_returns=list(schedule["episode_returns"]),
                   episode_lengths=list(schedule["episode_lengths"]), wall_time_s=schedule["wall_time_s"],
                   behaviour_version=behaviour_version, env_restarts=schedule.get("env_restarts", 0),
                   team_returns=list(schedule.get("team_returns", [])),
                   agent_steps=schedule.get("agent_steps", 0),
                   # A team's episode goes on only in an env that continues from its saved state.
                   teams_open=list(schedule.get("teams_open", [])) if at_swap and envs_restored else [])


class RolloutScheduler:
    def __init__(self, config: TrainConfig, pool: EnvBackend, storages: tuple[RolloutStorage, RolloutStorage],
                 final_obs: Mapping[str, np.ndarray], inference: BatchedInference, learner: LearnerHandle,
                 on_update: Callable[[dict[str, Any]], None], start: StartPoint | None = None,
                 checkpoint: Callable[[int, bool], Awaitable[None]] | None = None,
                 checkpoint_every: int = 0, agents: int = 1) -> None:
        """`checkpoint(g, stopping)` runs inside swap g (everything paused) every `checkpoint_every`
        updates, and in the swap a stop was requested before (`stopping`).

        `agents`: the storage rows of each env (a multi-agent env's agents, row = env * agents +
        agent); one collector per row.

        `final_obs` (key -> (N, ...)): where the backend leaves the final observation of an episode
        cut by a time limit, whose value becomes the step's bootstrap value.
        """
        self.cfg = config
        self.pool = pool
        self.storages = storages
        self.final_obs = final_obs
        self.inference = inference
        self.learner = learner
        self.on_update = on_update
        self.sync = config.mode == "sync"
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.agents = agents
        self.rows = config.num_envs * agents
        self._begin_at(start or StartPoint())
        self._rollout_episodes: list[tuple[int, int, float, int]] = []  # (step, env, return, length)
        self._rollout_restarts = 0
        self._envs_collecting = 0
        self.collector_clock = BusyClock()
        self.learner_clock = BusyClock()
        self._start = 0.0
        self._window: tuple[float, float, float, int, int] = (0.0, 0.0, 0.0, 0, 0)
        self._stop_requested = False
        self.stopped_at: int | None = None  # the swap a requested stop ended the run in
        self._updating: asyncio.Future[None] | None = None  # the learner's update and its metrics row

    def _begin_at(self, start: StartPoint) -> None:
        self.start = start
        n = self.rows
        # Swap g closes rollout g; publish g follows update g. A resumed run already passed swap rollout-1.
        self.swap = SwapBarrier(n + 1, on_swap=self._on_swap, generation=start.rollout)
        self.step_barrier = SwapBarrier(n) if self.sync else None
        self.publish_barrier = (SwapBarrier(n + 1, on_swap=self._on_publish,
                                            generation=start.rollout - start.learn_first)
                                if self.sync else None)
        self.inference_version = self.learner.version
        # The version of the parameters that collected the rollout the learner learns next.
        self.behaviour_version = start.behaviour_version
        self.episode_returns: deque[float] = deque(start.episode_returns, maxlen=EPISODE_WINDOW)
        self.episode_lengths: deque[int] = deque(start.episode_lengths, maxlen=EPISODE_WINDOW)
        self.episodes = start.episodes
        self.team_returns: deque[float] = deque(start.team_returns, maxlen=EPISODE_WINDOW)
        self.agent_steps = start.agent_steps
        self.teams_open = Teams(self.agents, start.teams_open)
        # Env re-creations reported by the steps of the rollouts swapped so far (a step's
        # StepResult.restarted), not the backend's count, which moves while the next rollout runs.
        self.env_restarts = start.env_restarts

    def save(self, generation: int | None) -> dict[str, Any]:
        """The schedule's part of a checkpoint ("schedule", "rollout"): inside swap `generation`, with the
        rollout waiting to be learned; with None (a stop outside a swap), the episode statistics alone."""
        wall = time.perf_counter() - self._start if self._start else self.start.wall_time_s
        parts: dict[str, Any] = {"schedule": {
            "episodes": self.episodes, "episode_returns": list(self.episode_returns),
            "episode_lengths": list(self.episode_lengths), "wall_time_s": wall,
            "behaviour_version": self.behaviour_version, "env_restarts": self.env_restarts,
            "team_returns": list(self.team_returns), "agent_steps": self.agent_steps,
            "teams_open": self.teams_open.state()}}
        if generation is not None:
            storage = self.storages[generation % 2]
            parts["rollout"] = {name: torch.from_numpy(a.copy()) for name, a in storage.arrays.items()}
        return parts

    def restore(self, kind: str, parts: Mapping[str, Any], envs_restored: bool) -> None:
        """Continue from a checkpoint of `kind` (before `run`): a swap checkpoint's rollout goes back into
        its storage and is learned first."""
        start = StartPoint.of_checkpoint(kind, parts, envs_restored)
        if start.learn_first:
            storage = self.storages[(start.rollout - 1) % 2]
            storage.begin(start.rollout - 1)
            for name, tensor in parts["rollout"].items():
                storage.arrays[name][...] = tensor.numpy()
        self._begin_at(start)

    def request_stop(self) -> None:
        """End the run at the next swap, after its checkpoint: every env finishes its rollout and the
        learner its update, so the checkpoint resumes exactly. `run` then returns with `stopped_at` set."""
        self._stop_requested = True

    async def settle(self) -> None:
        """Wait for an update cut short by a stop to finish and write its metrics row, so the metrics
        end at the update the stop checkpoint holds; re-raise its failure."""
        if self._updating is not None:
            await wait_settled(self._updating)
            if not self._updating.cancelled() and self._updating.exception() is not None:
                raise self._updating.exception()

    async def run(self) -> None:
        """Collect and learn `num_rollouts` rollouts, or up to a requested stop; on any failure stop every
        coroutine and re-raise."""
        self._start = time.perf_counter() - self.start.wall_time_s
        self._window = (time.perf_counter(), 0.0, 0.0, 0, 0)
        first = self.storages[self.start.rollout % 2]
        if self.start.learn_first:
            first.continue_from(self.storages[(self.start.rollout - 1) % 2])
        first.begin(self.start.rollout)
        if not self.start.envs_restored:
            await asyncio.gather(*(self.pool.reset(StepTicket(self.start.rollout, i, 0))
                                   for i in range(self.rows)))
            for env in range(self.rows):
                first.start_episode(env)
        if not (self.sync and self.start.learn_first):  # sync: collection waits for the next publish
            self._begin_collection()
        tasks = [asyncio.ensure_future(self._collect(i)) for i in range(self.rows)]
        tasks.append(asyncio.ensure_future(self._learn()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
            if errors:
                # A barrier abort is a consequence; report the failure that caused it.
                raise next((e for e in errors if not isinstance(e, BarrierAborted)), errors[0])
        finally:
            for barrier in (self.swap, self.step_barrier, self.publish_barrier):
                if barrier is not None:
                    barrier.abort()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect(self, env: int) -> None:
        cfg = self.cfg
        resumed_in_sync = self.start.learn_first and self.publish_barrier is not None
        if resumed_in_sync and self.start.rollout < cfg.num_rollouts:
            await self.publish_barrier.wait()
        for rollout in range(self.start.rollout, cfg.num_rollouts):
            storage = self.storages[rollout % 2]
            for step in range(cfg.rollout):
                ticket = StepTicket(rollout, env, step)
                act = await self.inference.act(ticket, storage.obs_at(step, env),
                                               storage.memory_at(step, env))
                storage.record_action(step, env, act.action, act.logprob, act.value, act.state)
                result = await self.pool.step(ticket, act.action)
                if storage.record_step(step, env, result):
                    final = {key: array[env] for key, array in self.final_obs.items()}
                    value = await self.inference.value(final, storage.memory_after(step, env))
                    storage.bootstrap_values[step, env] = value.value
                if result.episode is not None:
                    self._rollout_episodes.append((step, env, *result.episode))
                if result.restarted is not None:
                    self._rollout_restarts += 1
                if self.step_barrier is not None:
                    await self.step_barrier.wait()
            self._envs_collecting -= 1
            if self._envs_collecting == 0:
                self.collector_clock.stop()
            await self.swap.wait()
            if self.stopped_at is not None:
                return
            if self.publish_barrier is not None and rollout + 1 < cfg.num_rollouts:
                await self.publish_barrier.wait()

    async def _learn(self) -> None:
        first = self.start.rollout - self.start.learn_first
        for update in range(first, self.cfg.num_rollouts):
            if not (self.start.learn_first and update == first):  # resumed: that swap is behind us
                await self.swap.wait()
                if self.stopped_at is not None:
                    return
            # Shielded: an update cut short by a stop still finishes and writes its row (see settle).
            self._updating = asyncio.ensure_future(self._update(update))
            await asyncio.shield(self._updating)
            if self.publish_barrier is not None and update + 1 < self.cfg.num_rollouts:
                await self.publish_barrier.wait()

    async def _update(self, update: int) -> None:
        storage = self.storages[update % 2]
        lag = self.learner.version - self.behaviour_version
        self.learner_clock.start()
        stats = await self.learner.update(storage, self.behaviour_version)
        self.learner_clock.stop()
        self.on_update(self._metrics(update, storage, lag, stats))

    def _on_swap(self, generation: int) -> Awaitable[None] | None:
        finished = self.storages[generation % 2]
        episodes = sorted(self._rollout_episodes)  # ticket order, not arrival order
        for _, _, ret, length in episodes:
            self.episode_returns.append(ret)
            self.episode_lengths.append(length)
            self.episodes += 1
        if self.agents > 1:
            self.team_returns.extend(self.teams_open.add(episodes))
            self.agent_steps += int(finished.row_active.sum())
        self._rollout_episodes.clear()
        self.env_restarts += self._rollout_restarts
        self._rollout_restarts = 0
        self.behaviour_version = self.inference_version  # only the version crosses: the learner kept them
        if generation + 1 < self.cfg.num_rollouts:
            upcoming = self.storages[(generation + 1) % 2]
            upcoming.continue_from(finished)
            upcoming.begin(generation + 1)
        if not self.sync:
            self._on_publish(generation)
        if self._stop_requested:
            self.stopped_at = generation
        periodic = self.checkpoint_every and generation % self.checkpoint_every == 0 and generation > 0
        if self.checkpoint is not None and (periodic or self.stopped_at is not None):
            return self.checkpoint(generation, self.stopped_at is not None)
        return None

    def _on_publish(self, generation: int) -> None:
        self.inference.publish(self.learner.model)
        self.inference_version = self.learner.version
        if generation + 1 < self.cfg.num_rollouts:
            self._begin_collection()

    def _begin_collection(self) -> None:
        self._envs_collecting = self.rows
        self.collector_clock.start()

    def _metrics(self, update: int, storage: RolloutStorage, lag: int,
                 stats: dict[str, float]) -> dict[str, Any]:
        cfg = self.cfg
        now = time.perf_counter()
        last_t, last_learn, last_collect, last_passes, last_rows = self._window
        learn, collect = self.learner_clock.total(), self.collector_clock.total()
        passes, rows = self.inference.forward_passes, self.inference.rows_served
        self._window = (now, learn, collect, passes, rows)
        span = max(now - last_t, 1e-9)
        metrics: dict[str, Any] = {
            "update": update + 1,
            "global_step": (update + 1) * cfg.num_envs * cfg.rollout,
            "wall_time_s": now - self._start,
            "sps": cfg.num_envs * cfg.rollout / span,
            "episode_return_mean": _mean(self.episode_returns),
            "episode_length_mean": _mean(self.episode_lengths),
            "episodes": self.episodes,
            "policy_lag": lag,
            "learner_busy_frac": (learn - last_learn) / span,
            "collector_busy_frac": (collect - last_collect) / span,
            "inference_batch_mean": (rows - last_rows) / max(passes - last_passes, 1),
            "env_restarts": self.env_restarts,
            "actions_sha256": hashlib.sha256(storage.actions.tobytes()).hexdigest(),
        }
        if self.agents > 1:  # episodes and their returns above are each agent's
            metrics["agent_steps"] = self.agent_steps
            metrics["team_return_mean"] = _mean(self.team_returns)
        metrics.update(stats)
        return metrics


class Teams:
    """Each env's team episode: the return summed over its agents, complete once every agent's episode
    ended (an agent that left ends its own before the others, maybe a rollout earlier)."""

    def __init__(self, agents: int, state: list[tuple[int, float, int]]) -> None:
        self.agents = agents
        self._open = {int(env): (float(ret), int(ended)) for env, ret, ended in state}

    def add(self, episodes: list[tuple[int, int, float, int]]) -> list[float]:
        """The team returns that the agents' episodes (step, row, return, length), in ticket order,
        complete."""
        done = []
        for _, row, ret, _ in episodes:
            total, ended = self._open.pop(row // self.agents, (0.0, 0))
            if ended + 1 == self.agents:
                done.append(total + ret)
            else:
                self._open[row // self.agents] = (total + ret, ended + 1)
        return done

    def state(self) -> list[tuple[int, float, int]]:
        return [(env, ret, ended) for env, (ret, ended) in sorted(self._open.items())]


def _mean(values: deque) -> float | None:
    return float(np.mean(values)) if values else None
