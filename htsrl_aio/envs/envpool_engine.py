"""EnvPool tasks (`--env envpool:<task id>`) as vector engines: Atari, Google Research Football,
MuJoCo, Procgen, ViZDoom, MiniGrid, highway-env and more, from one wheel (the `envpool` extra).

EnvPool's Atari tasks get the same preprocessing as ALE ids (sticky actions at 0.25 for v5, no-op and
fire resets, reward clipping with raw returns logged, optional episodic life: `AtariOutcome`); every
other task is used as EnvPool defines it, with `--env-kwargs` passed to `envpool.make_gymnasium` (an
option the task does not have is refused in one sentence). The frame flags become the task's own options
where it has them (`--frame-size`: img_height/img_width, `--grayscale`: gray_scale, `--frame-stack`:
stack_num) and are refused where it has not, except `--frame-stack K`, which then stacks image
observations here. GFootball tasks stack 4 super-mini-map frames unless `--frame-stack` says
otherwise, as the paper's runs did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from htsrl_aio.envs.atari import AtariOptions, AtariOutcome
from htsrl_aio.envs.engines import GymStep, StackedEngine, VectorEngine, row
from htsrl_aio.errors import ConfigError

ENVPOOL_PREFIX = "envpool:"
FOOTBALL_STACK = 4  # the paper stacks the last 4 super-mini-maps
INSTALL_HINT = 'install it with `pip install "htsrl-aio[envpool]"` (Linux, Python >= 3.11)'
# make_gymnasium options that htsrl-aio sets itself (--num-envs, --engine-batch, --engine-threads, --seed).
RESERVED = ("num_envs", "batch_size", "num_threads", "seed", "env_seed")
MASK_KEY = "legal_action_mask"  # in the info of EnvPool's board and card games
# Atari options that the --atari-* flags set (reward clipping and episodic life are done in AtariOutcome).
ATARI_FLAGS = {"noop_max": "--atari-noop-max", "use_fire_reset": "--atari-fire-reset",
               "episodic_life": "--atari-episodic-life", "reward_clip": "no flag: rewards are always clipped"}


def import_envpool() -> Any:
    try:
        import envpool
    except ImportError as exc:
        raise ImportError(f"EnvPool is not installed ({exc}); {INSTALL_HINT}.") from None
    return envpool


def is_envpool_atari(task_id: str) -> bool:
    from envpool.registration import registry

    return registry.specs[task_id][1] == "AtariEnvSpec"


def envpool_spec(task_id: str, kwargs: dict[str, Any], atari: AtariOptions | None,
                 size: tuple[int, int] | None, grayscale: bool, stack: int | None) -> EnvPoolSpec:
    """The engine recipe for an EnvPool task with the run's flags; raise ConfigError for an option the
    task does not have."""
    try:
        spec = import_envpool().make_spec(task_id)
    except (ImportError, OSError) as exc:  # Procgen's library needs the system's Qt5 (libqt5gui5)
        reason = str(exc).rstrip(".")
        raise ConfigError(f"--env envpool:{task_id}: EnvPool cannot load this task ({reason}).") from None
    options = set(spec.config._fields) - set(RESERVED)
    for key in kwargs:
        if key not in options:
            raise ConfigError(f"--env-kwargs {key}: EnvPool task {task_id!r} has no option {key!r} "
                              + ("(htsrl-aio sets it from its own flags)." if key in RESERVED else
                                 f"(its options: {', '.join(sorted(options))})."))
    if atari is not None:
        owned = dict(ATARI_FLAGS)
        if atari.sticky is not None:
            owned["repeat_action_probability"] = "--atari-sticky"
        clash = sorted(set(kwargs) & set(owned))
        if clash:
            raise ConfigError(f"--env-kwargs {clash[0]} cannot be given for EnvPool's Atari task "
                              f"{task_id!r}: htsrl-aio sets it ({owned[clash[0]]}).")
    # A stack the task cannot make itself is made here (StackedEngine).
    own_stack = "stack_num" in options
    wanted = {"--frame-size": {"img_height": size[0], "img_width": size[1]} if size else {},
              "--grayscale": {"gray_scale": True} if grayscale else {},
              "--frame-stack": {"stack_num": stack} if stack is not None and own_stack else {}}
    merged = dict(kwargs)
    for flag, values in wanted.items():
        if not set(values) <= options:
            raise ConfigError(f"{flag} cannot be applied to envpool:{task_id}: the task has no "
                              f"{'/'.join(values)} option; drop the flag, or run the env from its own "
                              "package, where the frame flags apply to its images.")
        if set(values) & set(kwargs):
            raise ConfigError(f"{flag} and --env-kwargs {'/'.join(sorted(set(values) & set(kwargs)))} set "
                              f"the same option of envpool:{task_id}; give one of them.")
        merged.update(values)
    default_stack = FOOTBALL_STACK if task_id.startswith("gfootball/") else 1
    outer = 1 if own_stack else stack or default_stack
    return EnvPoolSpec(task_id, tuple(sorted(merged.items())), atari, outer)


@dataclass(frozen=True)
class EnvPoolSpec:
    """Engines for one EnvPool task."""

    task_id: str
    kwargs: tuple[tuple[str, Any], ...] = ()  # --env-kwargs
    atari: AtariOptions | None = None  # set for Atari tasks
    frame_stack: int = 1  # --frame-stack: image observations of this many frames

    @property
    def name(self) -> str:
        return ENVPOOL_PREFIX + self.task_id

    def build(self, num_envs: int, threads: int, seeds: Sequence[int]) -> VectorEngine:
        engine = EnvPoolEngine(self, num_envs, threads, seeds)
        return engine if self.frame_stack == 1 else StackedEngine(engine, self.frame_stack)


class EnvPoolEngine:
    """`num_envs` envs of one EnvPool task in synchronous mode; env k is seeded with `seeds[k]`."""

    seeded_at_build = True

    def __init__(self, spec: EnvPoolSpec, num_envs: int, threads: int, seeds: Sequence[int]) -> None:
        envpool = import_envpool()
        kwargs = dict(spec.kwargs)
        if spec.atari is not None:
            options = spec.atari
            kwargs = {"repeat_action_probability": 0.25 if options.sticky is None else options.sticky,
                      "noop_max": options.noop_max, "use_fire_reset": options.fire_reset,
                      "episodic_life": False, "reward_clip": False, **kwargs}
        self.num_envs = num_envs
        self._pool = envpool.make_gymnasium(spec.task_id, num_envs=num_envs, batch_size=num_envs,
                                            num_threads=threads, seed=[int(s) for s in seeds], **kwargs)
        self.observation_space = self._pool.observation_space
        self.action_space = self._pool.action_space
        self._outcome = None if spec.atari is None else AtariOutcome(num_envs, spec.atari.episodic_life)
        dtype = self.action_space.dtype if isinstance(self.action_space, gym.spaces.Box) else np.int32
        self._action_dtype = dtype

    def reset(self, envs: Sequence[int], seeds: Sequence[int]) -> list[Any]:
        ids = np.asarray(envs, dtype=np.int32)
        obs, info = self._pool.reset(ids)
        at = {int(e): i for i, e in enumerate(info["env_id"])}  # EnvPool may answer in any order
        if self._outcome is not None:
            self._outcome.on_reset(envs, np.array([info["lives"][at[e]] for e in envs]))
        return [row(obs, at[e]) for e in envs]

    def step(self, actions: Sequence[Any]) -> list[GymStep]:
        ids = np.arange(self.num_envs, dtype=np.int32)
        obs, rewards, terminated, truncated, info = self._pool.step(
            np.asarray(actions, dtype=self._action_dtype), ids)
        at = {int(e): i for i, e in enumerate(info["env_id"])}
        steps = []
        for k in range(self.num_envs):
            i = at[k]
            if self._outcome is not None:
                steps.append(self._outcome.step(k, row(obs, i), float(rewards[i]), int(info["lives"][i]),
                                                bool(terminated[i]), bool(truncated[i])))
            else:
                steps.append((row(obs, i), float(rewards[i]), bool(terminated[i]), bool(truncated[i]),
                              self._info(info, i)))
        return steps

    @staticmethod
    def _info(info: dict[str, Any], i: int) -> dict[str, Any]:
        # The mask of legal actions (board and card games) reaches the env checker, which reports it.
        return {MASK_KEY: info[MASK_KEY][i]} if MASK_KEY in info else {}

    def close(self) -> None:
        self._pool.close()
