"""Env sources (gymnasium ids, factories) and the worker processes that step them."""

from htsrl_aio.envs.factory import EnvFactory, EnvSpec, probe_env, resolve_env

__all__ = ["EnvFactory", "EnvSpec", "probe_env", "resolve_env"]
