"""An in-process stand-in for an env backend whose replies arrive after random delays, in shuffled order.

Observations encode where they came from: [env id, step within episode, steps taken by this env],
so a test can check that every storage slot holds exactly the transition its ticket names.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np

from htsrl_aio.backends.protocol import obs_slot_of
from htsrl_aio.steps import StepResult, StepTicket

EPISODE_LEN = 7  # every 7th step ends an episode: terminated on odd episodes, truncated on even ones


class FakePool:
    def __init__(self, obs_buffers: list[np.ndarray], final_obs: np.ndarray,
                 max_delay: float = 0.002) -> None:
        self.obs_buffers = obs_buffers  # per storage: (T + 1, N, 4)
        self.final_obs = final_obs
        self.max_delay = max_delay
        self._noise = random.Random()  # unseeded on purpose: timing must not matter
        self.in_episode: dict[int, int] = {}
        self.total: dict[int, int] = {}
        self.episodes: dict[int, int] = {}
        self.actions: dict[tuple[int, int], int] = {}  # (env, env step) -> action received
        self.restarts = 0  # it never fails

    def _obs(self, env: int) -> np.ndarray:
        return np.array([env, self.in_episode[env], self.total[env], 0], dtype=np.float32)

    def reset(self, ticket: StepTicket) -> asyncio.Future:
        env = ticket.env
        buf, row = obs_slot_of(ticket)
        self.in_episode[env], self.total[env], self.episodes[env] = 0, 0, 0
        self.obs_buffers[buf][row, env] = self._obs(env)
        return self._later(None)

    def step(self, ticket: StepTicket, action: np.ndarray) -> asyncio.Future:
        env = ticket.env
        buf, row = obs_slot_of(ticket)
        self.actions[(env, self.total[env])] = int(action)
        self.in_episode[env] += 1
        self.total[env] += 1
        episode = None
        terminated = truncated = False
        if self.in_episode[env] == EPISODE_LEN:
            self.final_obs[env] = self._obs(env)
            terminated = self.episodes[env] % 2 == 1
            truncated = not terminated
            episode = (float(EPISODE_LEN), EPISODE_LEN)
            self.episodes[env] += 1
            self.in_episode[env] = 0
        self.obs_buffers[buf][row + 1, env] = self._obs(env)
        return self._later(StepResult(1.0, terminated, truncated, episode))

    def _later(self, value: object) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_later(self._noise.uniform(0, self.max_delay), _resolve, future, value)
        return future


def _resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)
