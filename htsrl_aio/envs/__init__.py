"""What an env is: sources (gymnasium ids, factories, AsyncEnvs), the checker, observation and action
spaces, and adapters (Atari, EnvPool, GFootball). How envs are hosted is in htsrl_aio.backends."""

from htsrl_aio.envs.async_env import AsyncEnv, is_async_env
from htsrl_aio.envs.check import CheckReport, check_env, probe_env
from htsrl_aio.envs.factory import EnvFactory, EnvSpec, resolve_env

__all__ = ["AsyncEnv", "CheckReport", "EnvFactory", "EnvSpec", "check_env", "is_async_env", "probe_env",
           "resolve_env"]
