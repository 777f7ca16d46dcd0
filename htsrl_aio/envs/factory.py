"""Turn what the user passed as `env` into something a worker process can build, and probe it.

`env` may be a gymnasium id ("CartPole-v1", "ALE/Pong-v5"), a "package.module:factory" string, or a
callable. Everything is checked in the parent, so a typo is reported in one sentence before any
worker process starts.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from htsrl_aio.config import ConfigError
from htsrl_aio.envs.async_env import close_env, is_async_env


@dataclass(frozen=True)
class EnvFactory:
    """A picklable recipe for one env replica: a gymnasium id or an importable callable."""

    env_id: str | None = None
    factory: Callable[[], Any] | None = None

    def __call__(self) -> gym.Env:
        if self.env_id is not None:
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


def resolve_env(env: str | Callable[[], Any]) -> EnvFactory:
    """Validate `env` and return the factory workers will use; raise ConfigError with a fix."""
    if callable(env):
        return EnvFactory(factory=env)
    if not isinstance(env, str) or not env:
        raise ConfigError(f"--env must be a gymnasium id or 'package.module:factory', got {env!r}.")
    if ":" in env:
        return EnvFactory(factory=_import_factory(env))
    _register_optional_envs(env)
    if env not in gym.registry:
        close = difflib.get_close_matches(env, list(gym.registry), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown env id {env!r}: it is not a registered gymnasium id.{hint}")
    return EnvFactory(env_id=env)


async def probe_env(factory: EnvFactory) -> EnvSpec:
    """Build one replica, check its spaces and one reset/step, and describe it."""
    name = factory.name
    try:
        env = factory()
    except Exception as exc:
        raise ConfigError(f"could not create env {name!r}: {type(exc).__name__}: {exc}") from None
    try:
        if not (hasattr(env, "observation_space") and hasattr(env, "action_space")):
            raise ConfigError(f"env factory {name!r} returned {type(env).__name__}, which is neither a "
                              "gymnasium env nor an AsyncEnv (no observation_space/action_space).")
        try:
            in_loop = is_async_env(env)
        except TypeError as exc:
            raise ConfigError(f"env {name!r}: {exc}.") from None
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise ConfigError(
                f"env {name!r} has observation space {obs_space}; htsrl-aio needs a Box "
                "(wrap it, e.g. with gymnasium.wrappers.FlattenObservation).")
        if not isinstance(act_space, gym.spaces.Discrete) or act_space.start != 0:
            raise ConfigError(
                f"env {name!r} has action space {act_space}; htsrl-aio trains Discrete(n) actions "
                "starting at 0 (wrap continuous control with a discretising ActionWrapper).")
        spec = EnvSpec(tuple(obs_space.shape), np.dtype(obs_space.dtype), int(act_space.n), in_loop)
        reset = (await env.reset(seed=0)) if in_loop else env.reset(seed=0)
        _check_reset(reset, name, spec)
        step = (await env.step(0)) if in_loop else env.step(0)
        _check_step(step, name, spec)
    finally:
        await close_env(env)
    if not in_loop and factory.factory is not None:
        try:
            pickle.dumps(factory.factory)
        except Exception as exc:
            raise ConfigError(
                f"the env factory {factory.factory!r} cannot be sent to worker processes ({exc}); "
                "define it as a module-level function or pass 'package.module:factory'.") from None
    return spec


def _check_reset(result: Any, name: str, spec: EnvSpec) -> None:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ConfigError(f"env {name!r}: reset() must return (obs, info) as in gymnasium >= 0.26.")
    check_obs(result[0], spec, name, "reset()")


def _check_step(result: Any, name: str, spec: EnvSpec) -> None:
    if not (isinstance(result, tuple) and len(result) == 5):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise ConfigError(f"env {name!r}: step() must return (obs, reward, terminated, truncated, "
                          f"info); it returned {got}.")
    check_obs(result[0], spec, name, "step()")


def check_obs(obs: Any, spec: EnvSpec, name: str, where: str) -> None:
    """Raise ConfigError unless `obs` fits the declared observation space's shape."""
    shape = np.shape(obs)
    if tuple(shape) != spec.obs_shape:
        raise ConfigError(
            f"env {name!r}: {where} returned an observation of shape {tuple(shape)} but its "
            f"observation_space says {spec.obs_shape}; make them agree.")


def _import_factory(target: str) -> Callable[[], Any]:
    module_name, _, attr = target.partition(":")
    # The current directory is importable, as for `python -m`, so `myenvs:make` just works.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for --env {target!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--env {target!r}: module {module_name!r} has no callable {attr!r}.")
    return factory


def _register_optional_envs(env_id: str) -> None:
    """ALE ids live in ale-py, which registers them only when asked."""
    if env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
