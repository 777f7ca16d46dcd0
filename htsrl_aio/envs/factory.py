"""Turn what the user passed as `env` into something a worker process can build, and probe it.

`env` may be a gymnasium id ("CartPole-v1", "ALE/Pong-v5"), a "package.module:factory" string, or a
callable. Everything is checked in the parent, so a typo is reported in one sentence before any
worker process starts.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from htsrl_aio.config import ConfigError, TrainConfig
from htsrl_aio.envs.atari import AtariOptions, PreprocessedAtariEnv, is_atari_id
from htsrl_aio.envs.football import (
    FootballEnv,
    FootballSpec,
    is_football_id,
    parse_football_id,
    require_gfootball,
)


@dataclass(frozen=True)
class EnvFactory:
    """A picklable recipe for one env replica: a gymnasium id or an importable callable."""

    env_id: str | None = None
    factory: Callable[[], Any] | None = None
    atari: AtariOptions | None = None  # ALE ids: preprocessing options
    football: FootballSpec | None = None  # gfootball/<scenario> ids: scenario and options

    def __call__(self) -> gym.Env:
        if self.env_id is not None:
            if is_atari_id(self.env_id):
                return PreprocessedAtariEnv(self.env_id, self.atari)
            if is_football_id(self.env_id):
                return FootballEnv(self.football or parse_football_id(self.env_id))
            _register_optional_envs(self.env_id)
            return gym.make(self.env_id)
        assert self.factory is not None
        return self.factory()

    @property
    def name(self) -> str:
        if self.env_id is not None:
            return self.env_id
        return f"{self.factory.__module__}:{getattr(self.factory, '__qualname__', self.factory)}"


@dataclass(frozen=True)
class EnvSpec:
    """What the runtime needs to know about every replica: observation layout and action count."""

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    in_loop: bool = False  # an AsyncEnv, stepped on the event loop rather than in worker processes


def resolve_env(env: str | Callable[[], Any], config: TrainConfig | None = None) -> EnvFactory:
    """Validate `env` and return the factory workers will use; raise ConfigError with a fix.

    `config` supplies env-family options (the `--atari-*` flags); without it they take their defaults.
    """
    if callable(env):
        return EnvFactory(factory=env)
    if not isinstance(env, str) or not env:
        raise ConfigError(f"--env must be a gymnasium id or 'package.module:factory', got {env!r}.")
    if ":" in env:
        return EnvFactory(factory=_import_factory(env))
    if is_football_id(env):
        spec = _football_spec(env, config)
        require_gfootball()
        return EnvFactory(env_id=env, football=spec)
    _register_optional_envs(env)
    if env not in gym.registry:
        close = difflib.get_close_matches(env, list(gym.registry), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown env id {env!r}: it is not a registered gymnasium id.{hint}")
    if is_atari_id(env):
        return EnvFactory(env_id=env, atari=_atari_options(config))
    return EnvFactory(env_id=env)


def _atari_options(config: TrainConfig | None) -> AtariOptions:
    if config is None:
        return AtariOptions()
    return AtariOptions(sticky=config.atari_sticky, episodic_life=config.atari_episodic_life,
                        fire_reset=config.atari_fire_reset, noop_max=config.atari_noop_max)


def _football_spec(env_id: str, config: TrainConfig | None) -> FootballSpec:
    if config is None:
        return parse_football_id(env_id)
    return parse_football_id(env_id, config.football_representation, config.football_rewards)


def _import_factory(target: str) -> Callable[[], Any]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--env {target!r} needs a module and a callable around the colon, as in "
                          "'mymodule:make_env'.")
    # The current directory is importable, as for `python -m`, so `myenvs:make` just works.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for --env {target!r}: {exc}") from None
    except Exception as exc:  # a syntax error, or the module's own code raised while it was imported
        raise ConfigError(f"importing module {module_name!r} for --env {target!r} failed with "
                          f"{type(exc).__name__}: {exc}; fix the module (`python -c 'import {module_name}'` "
                          "shows the traceback).") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--env {target!r}: module {module_name!r} has no callable {attr!r}.")
    return factory


def _register_optional_envs(env_id: str) -> None:
    """ALE ids live in ale-py, which registers them only when asked."""
    if env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
