"""Env backends by name (`--env-backend`), and the default for an env."""

from __future__ import annotations

from collections.abc import Callable

from htsrl_aio.backends.engine import EngineBackend
from htsrl_aio.backends.loop import LoopBackend
from htsrl_aio.backends.process import ProcessBackend
from htsrl_aio.backends.protocol import BackendArgs, EnvBackend
from htsrl_aio.envs.factory import EnvFactory, EnvSpec
from htsrl_aio.errors import ConfigError


def _ray_backend(args: BackendArgs) -> EnvBackend:
    from htsrl_aio.backends.ray_actors import RayBackend  # Ray is optional: imported only when asked for

    return RayBackend(args)


BACKENDS: dict[str, Callable[[BackendArgs], EnvBackend]] = {
    "process": ProcessBackend,
    "loop": LoopBackend,
    "engine": EngineBackend,
    "ray": _ray_backend,
}


def backend_name(choice: str, factory: EnvFactory, spec: EnvSpec) -> str:
    """The backend a run uses: `auto` is C++ engines for ALE and EnvPool ids, the event loop for an
    AsyncEnv, worker processes otherwise."""
    if choice == "auto":
        return "engine" if factory.engine is not None else "loop" if spec.in_loop else "process"
    if choice in ("process", "ray") and spec.in_loop:
        raise ConfigError(f"--env-backend {choice} cannot host an AsyncEnv (its coroutines need the event "
                          "loop); use --env-backend loop or auto.")
    if choice == "engine" and factory.engine is None:
        raise ConfigError(f"--env-backend engine runs envs in a C++ vector engine, which {factory.name!r} "
                          "is not: use an ALE/... id or an envpool:<task> id, or --env-backend auto.")
    if choice == "ray":
        from htsrl_aio.backends.ray_actors import import_ray

        import_ray()  # without Ray installed, say how to install it before anything starts
    return choice


def make_backend(name: str, args: BackendArgs) -> EnvBackend:
    return BACKENDS[name](args)
