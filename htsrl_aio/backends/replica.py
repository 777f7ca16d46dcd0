"""One env replica and its life cycle, written once for every backend.

A `Replica` owns one env and its `EpisodeTracker`. It resets into and steps into observation slots
(one array per observation key, views into the rollout storage the ticket names), checks what the env
returned, resets right after an episode ends with the seed derived for (env, episode), and with
`--on-env-error restart` re-creates a failed env. Backends only move commands and results: worker
processes run it synchronously, the event loop awaits it, other transports do either.

The life cycle is written as coroutines that await the env through `_call`, which awaits only what is
awaitable: for an AsyncEnv they suspend on its I/O; for a plain gymnasium env they never suspend, so
a worker drives them to completion without an event loop (`run_to_completion`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import traceback
from collections.abc import Callable, Coroutine
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar

import numpy as np

from htsrl_aio.backends import env_state
from htsrl_aio.backends.agent_group import Absent, AgentSlot, Joined, Left
from htsrl_aio.envs.async_env import close_env
from htsrl_aio.envs.spaces import ActionSpec, EnvOutputError, NonFinite, ObsLayout
from htsrl_aio.errors import EnvError, EnvTimeout
from htsrl_aio.seeding import env_reset_seed
from htsrl_aio.steps import ObsSlot, StepResult

T = TypeVar("T")

# An env that fails this often is broken, not unlucky: restarting it forever would hide that.
MAX_RESTARTS_PER_ENV = 10

ASYNC_IN_WORKER = ("the env returned an awaitable from a worker process; AsyncEnvs run in the event loop "
                   "(--env-backend loop)")



class Lineage(IntEnum):
    """The first id of a restarted env's seed lineage, so no episode seed of a run is ever reused."""

    RESUMED = 1  # resumed without its saved state: (RESUMED, update of the checkpoint)
    RESPAWNED = 2  # on a host started again after its predecessor was lost: (RESPAWNED, respawn count)


class TrackerState(NamedTuple):
    """What a checkpoint keeps of an EpisodeTracker."""

    episodes: int
    episode_return: float
    episode_length: int
    # Extra ids in every reset seed: () for the envs a run started with, something else for envs that
    # were started again (after a resume without env states, or in a re-spawned worker), so no
    # episode seed is ever reused.
    lineage: tuple[int, ...] = ()


class ReplicaState(NamedTuple):
    """A checkpointed replica: the signed env state (None when it cannot be saved) and its tracker."""

    env: bytes | None
    tracker: TrackerState


class EpisodeTracker:
    """Episode count, return and length of one replica, and the seed of its next episode."""

    def __init__(self, env_id: int, run_seed: int, lineage: tuple[int, ...] = ()) -> None:
        self.env_id = env_id
        self.run_seed = run_seed
        self.episodes = 0
        self.episode_return = 0.0
        self.episode_length = 0
        self.lineage = lineage

    def next_reset_seed(self) -> int:
        """Episode k of env i always starts from the same seed, however the run was scheduled."""
        seed = env_reset_seed(self.run_seed, self.env_id, *self.lineage, self.episodes)
        self.episodes += 1
        self.episode_return, self.episode_length = 0.0, 0
        return seed

    def state(self) -> TrackerState:
        return TrackerState(self.episodes, self.episode_return, self.episode_length, self.lineage)

    def load(self, state: TrackerState) -> None:
        self.episodes, self.episode_return, self.episode_length, lineage = state
        self.lineage = tuple(lineage)

    def on_step(self, returned: Any) -> tuple[StepResult, Any]:
        """Check and account one step's return value: (result, the step's observation)."""
        if not (isinstance(returned, tuple) and len(returned) == 5):
            got = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
            raise TypeError(f"step() must return (obs, reward, terminated, truncated, info), got {got}")
        obs, reward, terminated, truncated, info = returned
        if not isinstance(reward, (int, float, np.integer, np.floating)) or isinstance(reward, bool):
            raise TypeError(f"step() returned a reward of type {type(reward).__name__}; it must be a number")
        reward = float(reward)
        if not math.isfinite(reward):
            raise NonFinite("step()", f"reward ({reward})")
        info = info if isinstance(info, dict) else {}
        # An env that trains on a transformed reward (Atari's clipped one) reports the game's own in
        # info["raw_reward"]: returns are logged in the game's units.
        self.episode_return += float(info.get("raw_reward", reward))
        self.episode_length += 1
        episode = None
        # info["game_over"] = False: the termination only cuts bootstrapping (Atari's episodic life);
        # the env goes on without a reset, and the logged episode goes on with it.
        if (terminated or truncated) and info.get("game_over", True):
            episode = (self.episode_return, self.episode_length)
            # Counted afresh from here: an agent that left a multi-agent episode may join it again.
            self.episode_return, self.episode_length = 0.0, 0
        return StepResult(reward, bool(terminated), bool(truncated), episode), obs



class Replica:
    def __init__(self, env_id: int, factory: Callable[[], Any], layout: ObsLayout, action: ActionSpec,
                 run_seed: int, restart_on_error: bool = False, lineage: tuple[int, ...] = (),
                 timeout: float | None = None) -> None:
        """`timeout` (--env-timeout) bounds each awaited call of an AsyncEnv; a plain env's calls are
        bounded by whoever hosts it (a worker process is killed)."""
        self.factory = factory
        self.layout = layout
        self.action = action
        self.restart_on_error = restart_on_error  # --on-env-error restart
        self.timeout = timeout
        self.tracker = EpisodeTracker(env_id, run_seed, lineage)
        self.env = factory()
        # A multi-agent env's row whose agent is out of the episode (it left, or has not joined yet).
        self.waits = False

    @property
    def env_id(self) -> int:
        return self.tracker.env_id

    async def reset(self, into: ObsSlot) -> tuple[str, str] | None:
        """Start a new episode into `into`; with restarts on, (message, traceback) if it took one."""
        try:
            await self._reset(into)
            return None
        except Exception as exc:
            if not self.restart_on_error:
                raise
            failure = _describe(exc)
        await self._recreate()
        await self._reset(into)
        return failure

    async def step(self, action: Any, acted: ObsSlot, into: ObsSlot, final: ObsSlot) -> StepResult:
        """Act; the next observation goes to `into`. When the episode was cut by a time limit, its
        final observation goes to `final` (the next observation is then the reset one).

        `acted` is the observation the action was chosen at: if the env fails and is re-created, the
        lost step becomes a truncation with reward 0 there (`lost_step`).
        """
        try:
            return await self._step(action, into, final)
        except Exception as exc:
            if not self.restart_on_error:
                raise
            failure = _describe(exc)
        await self._recreate()
        return (await self.lost_step(acted, into, final))._replace(restarted=failure)

    async def lost_step(self, acted: ObsSlot, into: ObsSlot, final: ObsSlot,
                        absent: bool | None = None) -> StepResult:
        """A new episode in place of a step that could not happen (the env failed or its host died).

        The lost step counts as a time-limit truncation with reward 0 at the observation it acted on,
        so the learner bootstraps there instead of learning a false terminal state. For a multi-agent
        row whose agent was out of the episode (`absent`: as this replica knows it, or as the head node
        does when the replica is new), it is no transition at all.
        """
        absent = self.waits if absent is None else absent
        if not absent:
            for key, array in final.items():
                array[...] = acted[key]
        await self._reset(into)
        if absent:
            return StepResult(0.0, False, False, None, active=False, waits=self.waits)
        return StepResult(0.0, False, True, None, waits=self.waits)

    async def _reset(self, into: ObsSlot) -> None:
        returned = await self._call(self.env.reset(seed=self.tracker.next_reset_seed()), "reset()")
        self.waits = isinstance(returned, Absent)
        if self.waits:  # a multi-agent env's episode that starts without this row's agent
            _clear(into)
            return
        obs, _info = returned
        try:
            self.layout.write(obs, into, "reset()")
        except EnvOutputError as exc:
            raise exc.at(f"the reset of episode {self.tracker.episodes - 1}") from None

    async def _step(self, action: Any, into: ObsSlot, final: ObsSlot) -> StepResult:
        step, episode = self.tracker.episode_length + 1, self.tracker.episodes - 1
        try:
            returned = await self._call(self.env.step(self.action.to_env(action)), "step()")
            if isinstance(returned, Absent):
                return await self._absent(returned, into)
            if isinstance(returned, Joined):
                self.waits = False
                self.layout.write(returned.obs, into, "step()")
                return StepResult(0.0, False, False, None, active=False)
            left = isinstance(returned, Left)
            result, obs = self.tracker.on_step(returned.step if left else returned)
            if result.episode is not None:
                if result.truncated and not result.terminated:  # its value is the bootstrap target
                    self.layout.write(obs, final, "step()")
                if left:  # the env's episode goes on without this row's agent: no reset yet
                    _clear(into)
                    self.waits = True
                else:
                    await self._reset(into)
            else:
                self.layout.write(obs, into, "step()")
        except EnvOutputError as exc:
            raise exc.at(f"step {step} of episode {episode}") from None
        return result._replace(waits=self.waits)

    async def _absent(self, absent: Absent, into: ObsSlot) -> StepResult:
        """A step of a row whose agent left the episode: no transition, and no observation to store (the
        slot is zeroed, so its bits do not depend on what was there) until the env's episode ends."""
        if absent.ended:
            await self._reset(into)
        else:
            _clear(into)
            self.waits = True  # known here too after a resume, whose replica starts without it
        return StepResult(0.0, False, False, None, active=False, waits=self.waits)

    async def _call(self, value: Any, what: str) -> Any:
        """Await what an env returned only if it is awaitable (an AsyncEnv's coroutine), within the
        timeout; a plain env's value passes through, so a worker needs no event loop."""
        if not inspect.isawaitable(value):
            return value
        if self.timeout is None:
            return await value
        try:
            return await asyncio.wait_for(value, self.timeout)
        except asyncio.TimeoutError:
            raise EnvTimeout(what, self.timeout) from None

    async def _recreate(self) -> None:
        if isinstance(self.env, AgentSlot):  # the env of every agent's row: its group builds it once
            self.env.restart()
            return
        with contextlib.suppress(Exception):
            await close_env(self.env)
        self.env = self.factory()

    def get_state(self) -> ReplicaState:
        return ReplicaState(env_state.capture(self.env), self.tracker.state())

    def set_state(self, state: ReplicaState) -> str | None:
        """Load a checkpointed replica; None, or the reason its env state was not loaded."""
        self.tracker.load(TrackerState(*state.tracker))
        if state.env is None:
            return "the env's state could not be saved"
        try:
            env = env_state.restore(state.env, self.env)
        except env_state.NotRestored as exc:
            return str(exc)
        if env is not self.env:
            with contextlib.suppress(Exception):
                self.env.close()
            self.env = env
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the run's outcome is already decided
            await close_env(self.env)


class RestartBudget:
    """Counts env restarts for a backend and stops the run once one env failed too often."""

    def __init__(self, num_envs: int, env_name: str, on_restart: Callable[[str, str], None]) -> None:
        self.env_name = env_name
        self.on_restart = on_restart
        self.restarts = 0
        self._of_env = [0] * num_envs

    def charge(self, env_ids: list[int] | tuple[int, ...], message: str, details: str) -> EnvError | None:
        """Count re-created envs; the error that stops the run once one of them failed too often."""
        self.restarts += len(env_ids)
        self.on_restart(message, details)
        for env_id in env_ids:
            self._of_env[env_id] += 1
            if self._of_env[env_id] >= MAX_RESTARTS_PER_ENV:
                return env_error(f"env {env_id} of {self.env_name!r} was restarted {MAX_RESTARTS_PER_ENV} "
                                 f"times, so the run stopped; the last failure: {message}", details)
        return None

    def charge_step(self, env_id: int, restarted: tuple[str, str]) -> EnvError | None:
        message, details = restarted
        return self.charge([env_id], f"env {env_id} of {self.env_name!r} failed and was re-created: "
                                     f"{message}", details)


def env_error(message: str, details: str) -> EnvError:
    error = EnvError(message)
    error.details = details
    return error


def _clear(slot: ObsSlot) -> None:
    for array in slot.values():
        array[...] = 0


def _describe(exc: BaseException) -> tuple[str, str]:
    return f"{type(exc).__name__}: {exc}", traceback.format_exc()


def run_to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a Replica coroutine over a plain gymnasium env, which never suspends, with no event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise TypeError(ASYNC_IN_WORKER)
