"""Env sources (gymnasium ids, factories) and the worker processes that step them."""

from htsrl_aio.envs.async_env import AsyncEnv, is_async_env
from htsrl_aio.envs.factory import EnvFactory, EnvSpec, probe_env, resolve_env

__all__ = ["AsyncEnv", "EnvFactory", "EnvSpec", "is_async_env", "probe_env", "resolve_env"]
