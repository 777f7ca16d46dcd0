"""Env backends by name (`--env-backend`), what each says about where it runs envs, and the default
for an env. A new backend is one entry in BACKENDS."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from htsrl_aio.backends.engine import EngineBackend, engine_groups
from htsrl_aio.backends.loop import LoopBackend
from htsrl_aio.backends.process import ProcessBackend
from htsrl_aio.backends.protocol import BackendArgs, EnvBackend
from htsrl_aio.config import TrainConfig
from htsrl_aio.envs.factory import EnvFactory, EnvSpec
from htsrl_aio.errors import ConfigError


def _ray_backend(args: BackendArgs) -> EnvBackend:
    from htsrl_aio.backends.ray_actors import RayBackend  # Ray is optional: imported only when asked for

    return RayBackend(args)


class Backend(NamedTuple):
    make: Callable[[BackendArgs], EnvBackend]
    runs_envs: str  # where it runs envs, in a few words (check-env)
    placement: Callable[[TrainConfig], str]  # the same for one run's resolved settings (config.json)


def _engines(cfg: TrainConfig) -> str:
    assert cfg.engine_batch is not None
    return (f"in {len(engine_groups(cfg.num_envs, cfg.engine_batch))} C++ vector engine(s) of up to "
            f"{cfg.engine_batch} envs, {cfg.engine_threads} thread(s) each")


BACKENDS: dict[str, Backend] = {
    "process": Backend(ProcessBackend, "in worker processes",
                       lambda cfg: f"in {min(cfg.workers or 1, cfg.num_envs or 1)} worker processes"),
    "loop": Backend(LoopBackend, "in the event loop (AsyncEnv)", lambda cfg: "in the event loop"),
    "engine": Backend(EngineBackend, "in C++ vector engines", _engines),
    # Ray reports how many actors on which nodes once it has started (the backend's `placement`).
    "ray": Backend(_ray_backend, "on Ray actors",
                   lambda cfg: "on Ray actors (how many: once Ray has started)"),
}


def backend_name(choice: str, factory: EnvFactory, spec: EnvSpec, env_timeout: float = 0.0) -> str:
    """The backend a run uses: `auto` is C++ engines for ALE and EnvPool ids, the event loop for an
    AsyncEnv, worker processes otherwise."""
    if choice == "auto":
        return "engine" if factory.engine is not None else "loop" if spec.in_loop else "process"
    if choice == "loop" and not spec.in_loop and env_timeout > 0:
        # Its step runs on the loop's thread: a step that hangs holds the loop, so neither the timeout nor
        # a stop signal (handled on the loop) can end the run; only worker processes can be killed.
        raise ConfigError(f"--env-backend loop would step {factory.name!r}, a plain (not async) env, "
                          "inside the event loop, where neither --env-timeout nor Ctrl-C can stop a step "
                          "that hangs; use --env-backend process (the default for plain envs), or "
                          "--env-timeout 0 to step it in the loop unbounded (debugging).")
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
    return BACKENDS[name].make(args)
