"""What every env replica does around a step, wherever it runs (worker process or event loop).

Episode bookkeeping, derived reset seeds, checks on what the env returned, and writing observations
into the storage slot the ticket names. Keeping it in one place is what makes in-loop async envs and
process-hosted envs produce the same transitions.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple, Protocol

import numpy as np

from htsrl_aio.seeding import Stream, derive_seed


class EnvBackend(Protocol):
    """Steps env replicas by id: worker processes (EnvPool) or the event loop (LoopEnvPool)."""

    async def start(self) -> None: ...

    def reset(self, env_id: int, buf: int, t: int) -> asyncio.Future:
        """Reset env `env_id`; its first observation goes to storage `buf`, row `t`."""
        ...

    def step(self, env_id: int, action: int, buf: int, t: int) -> asyncio.Future:
        """Step env `env_id`; resolves to a StepResult, its next observation goes to `buf`, row `t`."""
        ...

    async def aclose(self) -> None: ...


class StepResult(NamedTuple):
    """What the runtime learns of one env step (the observation itself went to the storage)."""

    reward: float
    terminated: bool
    truncated: bool
    episode: tuple[float, int] | None  # (return, length) when an episode ended at this step


class StepOutcome(NamedTuple):
    result: StepResult
    obs: Any  # the step's observation; the caller replaces it by a reset observation if the episode ended


class EpisodeTracker:
    """Episode count, return and length of one replica, and the seed of its next episode."""

    def __init__(self, env_id: int, run_seed: int, obs_shape: tuple[int, ...]) -> None:
        self.env_id = env_id
        self.run_seed = run_seed
        self.obs_shape = obs_shape
        self.episodes = 0
        self.episode_return = 0.0
        self.episode_length = 0

    def next_reset_seed(self) -> int:
        """Episode k of env i always starts from the same seed, however the run was scheduled."""
        seed = derive_seed(self.run_seed, Stream.ENV_RESET, self.env_id, self.episodes)
        self.episodes += 1
        self.episode_return, self.episode_length = 0.0, 0
        return seed

    def on_step(self, returned: Any, final_obs_slot: np.ndarray) -> StepOutcome:
        """Check and account one step's return value; keep the final observation of an episode."""
        if not (isinstance(returned, tuple) and len(returned) == 5):
            got = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
            raise TypeError(f"step() must return (obs, reward, terminated, truncated, info), got {got}")
        obs, reward, terminated, truncated, _info = returned
        if not isinstance(reward, (int, float, np.integer, np.floating)) or isinstance(reward, bool):
            raise TypeError(f"step() returned a reward of type {type(reward).__name__}; it must be a number")
        reward = float(reward)
        self.episode_return += reward
        self.episode_length += 1
        episode = None
        if terminated or truncated:
            episode = (self.episode_return, self.episode_length)
            # Kept apart: a truncated episode bootstraps from the value of its final observation.
            self.write_obs(final_obs_slot, obs, "step()")
        return StepOutcome(StepResult(reward, bool(terminated), bool(truncated), episode), obs)

    def write_obs(self, target: np.ndarray, obs: Any, where: str) -> None:
        if np.shape(obs) != self.obs_shape:
            raise ValueError(f"{where} returned an observation of shape {np.shape(obs)} but the "
                             f"observation_space says {self.obs_shape}")
        target[...] = obs
