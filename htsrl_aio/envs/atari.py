"""Atari (ALE/... ids) on ale-py's C++ vector engine, and the Atari conventions every engine shares.

`AleEngine` wraps `AtariVectorEnv`, whose C++ pipeline does the standard preprocessing (4-frame skip
with max-pooling over the last two frames, 84x84 grayscale, a stack of 4 frames, up to 30 no-op
resets, fire reset, sticky actions) without OpenCV. `--frame-size` and `--frame-stack` set its frame
size and stack; of gymnasium's ALE options (`--env-kwargs`) it takes those in `ENGINE_KWARGS`, and
every other one (RAM or RGB observations, modes, difficulties, continuous actions) is refused in one
sentence that points at gymnasium's own ALE env (`--env ale_py:ALE/...`), never dropped.

One engine serves a whole group of envs with the engine backend, and a single env everywhere else
(`PreprocessedAtariEnv`); both give the same bits, because every episode starts from the seed the
runtime derived for it (`reset(seed=...)` of exactly the envs that ended, with ALE's own autoreset
never running).

Done here rather than in C++, because the runtime needs them exactly so (`AtariOutcome`, which the
EnvPool adapter uses for its Atari tasks too):

- Reward clipping: training sees sign(reward); `info["raw_reward"]` carries the game's reward, which
  the episode bookkeeping (`EpisodeTracker`) logs, so `episode_return_mean` is the game score.
- Episodic life: a lost life ends the *training* episode (terminated=True cuts bootstrapping) with
  `info["game_over"] = False`, which tells the runtime not to reset: the game goes on, and the logged
  return and length stay those of the whole game.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from htsrl_aio.envs.engines import GymStep, OneEngineEnv
from htsrl_aio.errors import ConfigError

ALE_PREFIX = "ALE/"
RAM_ID = re.compile(r"-ram-")  # RAM ids as old gym named them (Breakout-ram-v4); ale-py has no ALE/ ones
# The options of gymnasium's ALE env that ale-py's AtariVectorEnv takes as well (frameskip as an int).
ENGINE_KWARGS = ("full_action_space", "repeat_action_probability", "frameskip", "max_num_frames_per_episode")


@dataclass(frozen=True)
class AtariOptions:
    """Preprocessing choices beyond the standard ones; every field is also a `--atari-*` flag."""

    sticky: float | None = None  # repeat-action probability; None: the id's own (0.25 for v5, 0 for v4)
    episodic_life: bool = False
    fire_reset: bool = True
    noop_max: int = 30


def is_atari_id(env_id: str) -> bool:
    return env_id.startswith(ALE_PREFIX)


class AtariOutcome:
    """Reward clipping and episodic life for a batch of Atari envs (it remembers each env's lives)."""

    def __init__(self, num_envs: int, episodic_life: bool) -> None:
        self.episodic_life = episodic_life
        self._lives = np.zeros(num_envs, dtype=np.int64)

    def on_reset(self, envs: Sequence[int], lives: np.ndarray) -> None:
        self._lives[list(envs)] = lives

    def step(self, k: int, obs: Any, raw: float, lives: int, terminated: bool, truncated: bool) -> GymStep:
        info: dict[str, Any] = {"raw_reward": raw, "lives": lives}
        ended = terminated
        if self.episodic_life and lives < self._lives[k] and not terminated and not truncated:
            ended = True
            info["game_over"] = False
        self._lives[k] = lives
        return obs, float(np.sign(raw)), ended, truncated, info


@dataclass(frozen=True)
class AleSpec:
    """Engines for one ALE id, preprocessed as `options` say."""

    env_id: str
    options: AtariOptions = AtariOptions()
    kwargs: tuple[tuple[str, Any], ...] = ()  # --env-kwargs, all of them in ENGINE_KWARGS
    size: tuple[int, int] = (84, 84)  # --frame-size
    stack: int = 4  # --frame-stack

    @property
    def name(self) -> str:
        return self.env_id

    def build(self, num_envs: int, threads: int, seeds: Sequence[int]) -> AleEngine:
        return AleEngine(self, num_envs, threads)


def ale_spec(env_id: str, kwargs: dict[str, Any], options: AtariOptions, size: tuple[int, int] | None,
             stack: int | None) -> AleSpec:
    """The engine recipe for an ALE id with the run's flags; raise ConfigError for an option the engine
    cannot apply."""
    for key, value in kwargs.items():
        if key not in ENGINE_KWARGS or (key == "frameskip" and type(value) is not int):
            raise ConfigError(
                f"--env-kwargs {key}={value!r} cannot be applied to {env_id}: ALE/... ids run on ale-py's "
                f"C++ engine (grayscale frames, shaped by --frame-size and --frame-stack), which takes only "
                f"{', '.join(ENGINE_KWARGS)} (frameskip as an integer); use gymnasium's own ALE env in "
                f"worker processes instead: --env ale_py:{env_id} --env-kwargs {key}={value}.")
    if options.sticky is not None and "repeat_action_probability" in kwargs:
        raise ConfigError("--atari-sticky and --env-kwargs repeat_action_probability both set the "
                          "probability of repeating an action; give one of them.")
    return AleSpec(env_id, options, tuple(sorted(kwargs.items())), size or AleSpec.size,
                   stack or AleSpec.stack)


class AleEngine:
    """`num_envs` Atari games in one `AtariVectorEnv`, stepped together."""

    seeded_at_build = False

    def __init__(self, spec: AleSpec, num_envs: int, threads: int) -> None:
        from ale_py.vector_env import AtariVectorEnv  # the core imports ale-py only where Atari runs

        # The registered id decides the game and its own defaults (sticky actions, action set, length);
        # --env-kwargs override them.
        kwargs = {**gym.spec(spec.env_id).kwargs, **dict(spec.kwargs)}
        options = spec.options
        sticky = kwargs.get("repeat_action_probability", 0.25) if options.sticky is None else options.sticky
        self.num_envs = num_envs
        self._ale = AtariVectorEnv(
            kwargs["game"], num_envs=num_envs, num_threads=threads, repeat_action_probability=sticky,
            full_action_space=kwargs.get("full_action_space", False),
            max_num_frames_per_episode=kwargs.get("max_num_frames_per_episode", 108_000),
            frameskip=kwargs.get("frameskip", 4), stack_num=spec.stack, img_height=spec.size[0],
            img_width=spec.size[1], grayscale=True, maxpool=True,
            noop_max=options.noop_max, use_fire_reset=options.fire_reset,
            episodic_life=False, reward_clipping=False)
        self.observation_space = self._ale.single_observation_space
        self.action_space = gym.spaces.Discrete(int(self._ale.single_action_space.n))
        self._outcome = AtariOutcome(num_envs, options.episodic_life)
        self._started = False

    def reset(self, envs: Sequence[int], seeds: Sequence[int]) -> list[Any]:
        if self._started:
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[list(envs)] = True
            obs, info = self._ale.reset(seed=np.asarray(seeds, dtype=np.int64), options={"reset_mask": mask})
        else:  # ale-py's first reset is of every env; the runtime starts them all together
            assert list(envs) == list(range(self.num_envs)), "the first reset must start every env"
            obs, info = self._ale.reset(seed=np.asarray(seeds, dtype=np.int64))
            self._started = True
        # A masked reset reports every env (the others unchanged): keep the ones asked for.
        self._outcome.on_reset(envs, info["lives"][list(envs)])
        return [obs[k] for k in envs]

    def step(self, actions: Sequence[Any]) -> list[GymStep]:
        obs, rewards, terminated, truncated, info = self._ale.step(np.asarray(actions, dtype=np.int64))
        lives = info["lives"]
        return [self._outcome.step(k, obs[k], float(rewards[k]), int(lives[k]), bool(terminated[k]),
                                   bool(truncated[k])) for k in range(self.num_envs)]

    def close(self) -> None:
        self._ale.close()


class PreprocessedAtariEnv(OneEngineEnv):
    """One Atari game with the standard DQN/PPO preprocessing: uint8 observations of shape (4, 84, 84)
    (or as `ale_spec` says)."""

    def __init__(self, env_id: str, options: AtariOptions | None = None) -> None:
        self.options = options or AtariOptions()
        super().__init__(AleSpec(env_id, self.options))
