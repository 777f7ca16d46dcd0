"""C++ vector engines (ale-py's AtariVectorEnv, EnvPool) as groups of envs stepped in lockstep.

An engine holds `num_envs` envs and steps them all at once in its own C++ thread pool, with the GIL
released. It runs in synchronous mode (`batch_size == num_envs`): both engines can also return the
first B of N envs that finish, but their `recv` waits until B envs are ready, and at the end of a
rollout fewer than B are still stepping (the rest wait at the swap), so that mode deadlocks under
HTS-RL's schedule; ale-py's `send` cannot even name the envs it acts on. Asynchrony comes instead from
several engines (groups) stepping independently: backends/engine.py.

`VectorEngine` turns an engine's batched arrays into one gymnasium step tuple per env, so the
`Replica` life cycle (episodes, seeds, checks, the final observation of a truncation) stays the same
for every backend. `OneEngineEnv` is one such env as a plain gymnasium env: the process and loop
backends, the start-up probe, `check-env` and `eval` use it.

Seeds: ale-py resets any subset of its envs with one seed each, so every episode starts from the seed
the runtime derived for (env, episode). EnvPool takes one seed per env when it is built and resets each
env from that env's own stream after that: engines are built at their first reset, with the seeds of
those resets. Either way env i's episodes depend only on its seeds and its own actions, never on how
envs are grouped or scheduled, and a run gives the same bits on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

GymStep = tuple[Any, float, bool, bool, dict[str, Any]]


class VectorEngine(Protocol):
    num_envs: int
    observation_space: gym.Space  # of one env
    action_space: gym.Space
    # True: reset ignores its seeds; each env continues the stream of the seed it was built with.
    seeded_at_build: bool

    def reset(self, envs: Sequence[int], seeds: Sequence[int]) -> list[Any]:
        """Start a new episode in each of `envs` (indices into this engine); their observations."""
        ...

    def step(self, actions: Sequence[Any]) -> list[GymStep]:
        """Act in every env of the engine (one action each, in order); one gymnasium step per env."""
        ...

    def close(self) -> None: ...


class EngineSpec(Protocol):
    """A picklable recipe for engines of one task (it crosses to worker processes)."""

    @property
    def name(self) -> str: ...

    def build(self, num_envs: int, threads: int, seeds: Sequence[int]) -> VectorEngine:
        """An engine of `num_envs` envs on `threads` threads; `seeds` (one per env) are used by engines
        seeded when they are built (EnvPool)."""
        ...


def row(batch: Any, k: int) -> Any:
    """Env k's part of a batched observation (an array, or a dict or tuple of them)."""
    if isinstance(batch, dict):
        return {key: row(value, k) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(row(value, k) for value in batch)
    return batch[k]


class StackedEngine:
    """An engine whose image observations are its last `k` frames stacked along the channel axis (the
    paper's 4 stacked super-mini-maps for GFootball); the axis is the shorter of first and last."""

    def __init__(self, engine: VectorEngine, k: int) -> None:
        space = engine.observation_space
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 3):
            raise ValueError(f"--frame-stack needs image observations (3 dimensions), but this task's are "
                             f"{space}")
        self._engine = engine
        self.k = k
        self.axis = 0 if space.shape[0] <= space.shape[-1] else 2
        self.num_envs = engine.num_envs
        self.seeded_at_build = engine.seeded_at_build
        self.observation_space = gym.spaces.Box(np.repeat(space.low, k, self.axis),
                                                np.repeat(space.high, k, self.axis), dtype=space.dtype)
        self.action_space = engine.action_space
        self._stacks: dict[int, np.ndarray] = {}

    def reset(self, envs: Sequence[int], seeds: Sequence[int]) -> list[Any]:
        frames = self._engine.reset(envs, seeds)
        for env, frame in zip(envs, frames):
            self._stacks[env] = np.concatenate([frame] * self.k, self.axis)
        return [self._stacks[env].copy() for env in envs]

    def step(self, actions: Sequence[Any]) -> list[GymStep]:
        steps = self._engine.step(actions)
        stacked = []
        for env, (frame, reward, terminated, truncated, info) in enumerate(steps):
            channels = frame.shape[self.axis]
            rest = np.take(self._stacks[env], range(channels, channels * self.k), self.axis)
            self._stacks[env] = np.concatenate([rest, frame], self.axis)
            stacked.append((self._stacks[env].copy(), reward, terminated, truncated, info))
        return stacked

    def close(self) -> None:
        self._engine.close()


class OneEngineEnv(gym.Env):
    """One env of a one-env engine, as a gymnasium env (its engine is built at the first reset)."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec_ = spec
        self._engine = spec.build(1, 1, [0])
        self.observation_space = self._engine.observation_space
        self.action_space = self._engine.action_space
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if seed is not None and not self._seeded and self._engine.seeded_at_build:
            self._engine.close()  # the first seed becomes the engine's
            self._engine = self.spec_.build(1, 1, [seed])
        self._seeded = True
        return self._engine.reset([0], [0 if seed is None else seed])[0], {}

    def step(self, action: Any) -> GymStep:
        return self._engine.step([action])[0]

    def close(self) -> None:
        self._engine.close()
