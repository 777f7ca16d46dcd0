"""Env backends by name (`--env-backend`), and the default for an env."""

from __future__ import annotations

from collections.abc import Callable

from htsrl_aio.config import ConfigError
from htsrl_aio.envs.backend import BackendArgs, EnvBackend
from htsrl_aio.envs.engine_backend import EngineBackend
from htsrl_aio.envs.factory import EnvFactory, EnvSpec
from htsrl_aio.envs.loop_backend import LoopBackend
from htsrl_aio.envs.process_backend import ProcessBackend

BACKENDS: dict[str, Callable[[BackendArgs], EnvBackend]] = {
    "process": ProcessBackend,
    "loop": LoopBackend,
    "engine": EngineBackend,
}


def backend_name(choice: str, factory: EnvFactory, spec: EnvSpec) -> str:
    """The backend a run uses: `auto` is C++ engines for ALE and EnvPool ids, the event loop for an
    AsyncEnv, worker processes otherwise."""
    if choice == "auto":
        return "engine" if factory.engine is not None else "loop" if spec.in_loop else "process"
    if choice == "process" and spec.in_loop:
        raise ConfigError("--env-backend process cannot host an AsyncEnv (its coroutines need the event "
                          "loop); use --env-backend loop or auto.")
    if choice == "engine" and factory.engine is None:
        raise ConfigError(f"--env-backend engine runs envs in a C++ vector engine, which {factory.name!r} "
                          "is not: use an ALE/... id or an envpool:<task> id, or --env-backend auto.")
    return choice


def make_backend(name: str, args: BackendArgs) -> EnvBackend:
    return BACKENDS[name](args)
