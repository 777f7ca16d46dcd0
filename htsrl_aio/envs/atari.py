"""Atari as one gymnasium-style env per replica, preprocessed in C++ by ale-py's AtariVectorEnv.

Each replica is an `AtariVectorEnv` of a single env with one thread: the runtime steps replicas by env
id, one action at a time, and the vector env's `send`/`recv` carry no env ids, so one vector env per
replica is the fit. Its C++ pipeline does the standard preprocessing (4-frame skip with max-pooling
over the last two frames, 84x84 grayscale, a stack of 4 frames, up to 30 no-op resets, fire reset,
sticky actions), without needing OpenCV; one such replica stepped 2,060 steps/s on one core of the
dev machine against 1,800 for gymnasium's Python wrappers (`AtariPreprocessing` +
`FrameStackObservation`; docs/benchmarks.md, Atari section).

Done here rather than in C++, because the runtime needs them exactly so:

- Every reset is `reset(seed=[s])` with the seed the runtime derived for (env, episode), so episodes
  are reproducible whatever the scheduling. ALE's own autoreset never runs: the runtime resets a
  replica right after the step that ended its episode, which clears it (a reset after an episode end
  replays exactly like a fresh env with the same seed; tests/test_atari.py).
- Reward clipping: training sees sign(reward); `info["raw_reward"]` carries the game's reward, which
  the episode bookkeeping (`EpisodeTracker`) logs, so `episode_return_mean` is the game score.
- Episodic life: a lost life ends the *training* episode (terminated=True cuts bootstrapping) with
  `info["game_over"] = False`, which tells the runtime not to reset: the game goes on, and the logged
  return and length stay those of the whole game.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from ale_py.vector_env import AtariVectorEnv

ALE_PREFIX = "ALE/"


@dataclass(frozen=True)
class AtariOptions:
    """Preprocessing choices beyond the standard ones; every field is also a `--atari-*` flag."""

    sticky: float | None = None  # repeat-action probability; None: the id's own (0.25 for v5, 0 for v4)
    episodic_life: bool = False
    fire_reset: bool = True
    noop_max: int = 30


def is_atari_id(env_id: str) -> bool:
    return env_id.startswith(ALE_PREFIX)


class PreprocessedAtariEnv(gym.Env):
    """One Atari game with the standard DQN/PPO preprocessing: uint8 observations of shape (4, 84, 84)."""

    def __init__(self, env_id: str, options: AtariOptions | None = None) -> None:
        options = options or AtariOptions()
        # The registered id decides the game and its own defaults (sticky actions, action set, length).
        kwargs = gym.spec(env_id).kwargs
        sticky = options.sticky
        if sticky is None:
            sticky = kwargs.get("repeat_action_probability", 0.25)
        self.options = options
        self._ale = AtariVectorEnv(
            kwargs["game"], num_envs=1, num_threads=1, repeat_action_probability=sticky,
            full_action_space=kwargs.get("full_action_space", False),
            max_num_frames_per_episode=kwargs.get("max_num_frames_per_episode", 108_000),
            frameskip=4, stack_num=4, img_height=84, img_width=84, grayscale=True, maxpool=True,
            noop_max=options.noop_max, use_fire_reset=options.fire_reset,
            episodic_life=False, reward_clipping=False)
        self.observation_space = self._ale.single_observation_space
        self.action_space = gym.spaces.Discrete(int(self._ale.single_action_space.n))
        self._action = np.zeros(1, dtype=np.int64)
        self._lives = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = None if seed is None else np.array([seed])
        obs, info = self._ale.reset(seed=seeds)
        self._lives = int(info["lives"][0])
        return obs[0], {"lives": self._lives}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._action[0] = action
        obs, rewards, terminated, truncated, info = self._ale.step(self._action)
        raw = float(rewards[0])
        lives = int(info["lives"][0])
        out: dict[str, Any] = {"raw_reward": raw, "lives": lives}
        game_over = bool(terminated[0])
        ended = game_over
        if self.options.episodic_life and lives < self._lives and not game_over and not truncated[0]:
            ended = True
            out["game_over"] = False
        self._lives = lives
        return obs[0], float(np.sign(raw)), ended, bool(truncated[0]), out

    def close(self) -> None:
        self._ale.close()
