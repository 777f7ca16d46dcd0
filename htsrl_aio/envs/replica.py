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

    restarts: int  # envs re-created after a failure (--on-env-error restart)

    async def start(self) -> None: ...

    def reset(self, env_id: int, buf: int, t: int) -> asyncio.Future:
        """Reset env `env_id`; its first observation goes to storage `buf`, row `t`."""
        ...

    def step(self, env_id: int, action: int, buf: int, t: int) -> asyncio.Future:
        """Step env `env_id`; resolves to a StepResult, its next observation goes to `buf`, row `t`."""
        ...

    def get_state(self, env_id: int) -> asyncio.Future:
        """Resolves to (signed env state or None when it cannot be saved, TrackerState) of an idle env."""
        ...

    def set_state(self, env_id: int, blob: bytes | None, tracker: TrackerState) -> asyncio.Future:
        """Load a checkpointed replica; resolves to None, or the reason its env state was not loaded."""
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


class TrackerState(NamedTuple):
    """What a checkpoint keeps of an EpisodeTracker."""

    episodes: int
    episode_return: float
    episode_length: int
    # Extra ids in every reset seed: () for the envs a run started with, something else for envs that
    # were started again (after a resume without env states), so no episode seed is ever reused.
    lineage: tuple[int, ...] = ()


class EpisodeTracker:
    """Episode count, return and length of one replica, and the seed of its next episode."""

    def __init__(self, env_id: int, run_seed: int, obs_shape: tuple[int, ...]) -> None:
        self.env_id = env_id
        self.run_seed = run_seed
        self.obs_shape = obs_shape
        self.episodes = 0
        self.episode_return = 0.0
        self.episode_length = 0
        self.lineage: tuple[int, ...] = ()

    def next_reset_seed(self) -> int:
        """Episode k of env i always starts from the same seed, however the run was scheduled."""
        seed = derive_seed(self.run_seed, Stream.ENV_RESET, self.env_id, *self.lineage, self.episodes)
        self.episodes += 1
        self.episode_return, self.episode_length = 0.0, 0
        return seed

    def state(self) -> TrackerState:
        return TrackerState(self.episodes, self.episode_return, self.episode_length, self.lineage)

    def load(self, state: TrackerState) -> None:
        self.episodes, self.episode_return, self.episode_length, lineage = state
        self.lineage = tuple(lineage)

    def on_step(self, returned: Any, final_obs_slot: np.ndarray) -> StepOutcome:
        """Check and account one step's return value; keep the final observation of an episode."""
        if not (isinstance(returned, tuple) and len(returned) == 5):
            got = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
            raise TypeError(f"step() must return (obs, reward, terminated, truncated, info), got {got}")
        obs, reward, terminated, truncated, info = returned
        if not isinstance(reward, (int, float, np.integer, np.floating)) or isinstance(reward, bool):
            raise TypeError(f"step() returned a reward of type {type(reward).__name__}; it must be a number")
        reward = float(reward)
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
            # Kept apart: a truncated episode bootstraps from the value of its final observation.
            self.write_obs(final_obs_slot, obs, "step()")
        return StepOutcome(StepResult(reward, bool(terminated), bool(truncated), episode), obs)

    def write_obs(self, target: np.ndarray, obs: Any, where: str) -> None:
        if np.shape(obs) != self.obs_shape:
            raise ValueError(f"{where} returned an observation of shape {np.shape(obs)} but the "
                             f"observation_space says {self.obs_shape}")
        target[...] = obs
