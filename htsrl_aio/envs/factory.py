"""Turn what the user passed as `env` into something a worker process can build, and probe it.

`env` may be a gymnasium id ("CartPole-v1", "ALE/Pong-v5", "MinAtar/Breakout-v1"), gymnasium's own
"package:EnvId" form (import the package, which registers the id, then make it), a
"package.module:factory" string, or a callable; `--env-kwargs` are passed to `gymnasium.make` or the
factory. Ids of well-known packages that register their envs on import (ale-py, MinAtar, MiniGrid,
highway-env, ViZDoom) work without naming the package. Everything is checked in the parent, so a typo
is reported in one sentence before any worker process starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from htsrl_aio.config import TrainConfig
from htsrl_aio.envs.action_masks import (
    MaskedAgentObservations,
    MaskedObservation,
    MaskMode,
    has_mask_key,
    mask_method,
)
from htsrl_aio.envs.atari import RAM_ID, AtariOptions, ale_spec, is_atari_id
from htsrl_aio.envs.engines import EngineSpec, OneEngineEnv
from htsrl_aio.envs.envpool_engine import (
    ENVPOOL_PREFIX,
    EnvPoolSpec,
    envpool_spec,
    import_envpool,
    is_envpool_atari,
)
from htsrl_aio.envs.football import (
    FootballEnv,
    FootballSpec,
    FootballTeam,
    is_football_id,
    parse_football_id,
    require_gfootball,
)
from htsrl_aio.envs.frames import FrameOptions
from htsrl_aio.envs.parallel import (
    AGENT_ID_KEY,
    GLOBAL_STATE_KEY,
    STATE_METHOD,
    MultiAgentError,
    add_agent_id,
    agent_spaces,
    as_parallel,
    global_state,
    global_state_space,
    is_aec_env,
    is_parallel_env,
    with_agent_id,
)
from htsrl_aio.envs.spaces import ActionSpec, ObsLayout, UnsupportedSpace
from htsrl_aio.errors import ConfigError

# Packages that register their gymnasium ids when imported (or when asked), by id prefix.
_REGISTERING_PACKAGES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ALE/",), "ale_py"),
    (("MinAtar/",), "minatar.gym"),
    (("MiniGrid-", "BabyAI-"), "minigrid"),
    (("highway", "merge", "roundabout", "parking", "intersection", "racetrack", "exit", "u-turn",
      "two-way", "lane-keeping"), "highway_env"),
    (("Vizdoom",), "vizdoom.gymnasium_wrapper"),
)


@dataclass(frozen=True)
class EnvFactory:
    """A picklable recipe for one env replica: a gymnasium id or an importable callable."""

    env_id: str | None = None
    factory: Callable[..., Any] | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()  # --env-kwargs, for gymnasium.make or the factory
    module: str | None = None  # "package:EnvId": the package that registers env_id
    frames: FrameOptions | None = None  # --frame-size/--grayscale/--frame-stack
    engine: EngineSpec | None = None  # ALE and envpool: ids: envs of a C++ vector engine
    football: FootballSpec | None = None  # gfootball/<scenario> ids: scenario and options
    agent_id: bool = False  # --agent-id: a multi-agent env's observations carry the one-hot agent index
    action_mask: MaskMode = "auto"  # --action-mask
    mask_info_key: str | None = None  # the info key of the env's action mask, as the probe found it
    global_state: bool = False  # --critic global: a multi-agent env's rows carry its global state too

    def __call__(self) -> gym.Env:
        if self.engine is not None:
            return OneEngineEnv(self.engine)
        if self.env_id is not None and is_football_id(self.env_id):
            football = self.football or parse_football_id(self.env_id)
            return FootballTeam(football) if football.players > 1 else FootballEnv(football)
        env = self._make()
        if is_aec_env(env):
            env = as_parallel(env)
        if self.frames is not None:
            if is_parallel_env(env):
                raise MultiAgentError("--frame-size, --grayscale and --frame-stack do not apply to "
                                      "multi-agent envs yet; drop them (SuperSuit's resize_v1, "
                                      "color_reduction_v0 and frame_stack_v1 do the same inside your "
                                      "factory).")
            env = self.frames.wrap(env)
        return self._with_mask(env)

    def _with_mask(self, env: Any) -> Any:
        """An env whose mask comes from a method or an info, with it as the observation key `action_mask`
        (a mask already in the observation needs nothing)."""
        if self.action_mask == "off":
            return env
        if is_parallel_env(env):
            first = env.possible_agents[0]
            if self.mask_info_key is None or has_mask_key(env.observation_space(first)):
                return env
            return MaskedAgentObservations(env, _mask_size(env.action_space(first)), self.mask_info_key)
        if not hasattr(env, "observation_space") or has_mask_key(env.observation_space):
            return env
        if self.mask_info_key is None and mask_method(env) is None:
            return env
        return MaskedObservation(env, _mask_size(env.action_space), self.mask_info_key)

    def _make(self) -> gym.Env:
        kwargs = dict(self.kwargs)
        if self.env_id is not None:
            if self.module is not None:
                importlib.import_module(self.module)
            _register_optional_envs(self.env_id)
            return gym.make(self.env_id, **kwargs)
        assert self.factory is not None
        return self.factory(**kwargs)

    @property
    def name(self) -> str:
        if self.engine is not None:
            return self.engine.name
        if self.env_id is not None:
            return self.env_id if self.module is None else f"{self.module}:{self.env_id}"
        if isinstance(self.factory, ImportedCallable):
            return f"{self.factory.module}:{self.factory.attr}"
        return f"{self.factory.__module__}:{getattr(self.factory, '__qualname__', self.factory)}"


def _mask_size(space: gym.Space) -> int:
    """Bits of a mask over `space`'s actions: one per category of each choice (sb3-contrib's layout)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(space.nvec.sum())
    return int(np.prod(getattr(space, "shape", ()) or (1,)))  # refused by EnvSpec: not maskable


@dataclass(frozen=True)
class ImportedCallable:
    """'module:attr', looked up where it is called: how a callable that pickle cannot send by reference
    (a closure, as PettingZoo's `parallel_env` is) reaches worker processes."""

    module: str
    attr: str

    def __call__(self, **kwargs: Any) -> Any:
        return self.target()(**kwargs)

    def target(self) -> Callable[..., Any]:
        """The callable 'module:attr' names."""
        return getattr(importlib.import_module(self.module), self.attr)


def _by_reference(module: str, attr: str, function: Callable[..., Any]) -> Callable[..., Any]:
    try:
        pickle.dumps(function)
    except Exception:
        return ImportedCallable(module, attr)
    return function


@dataclass(frozen=True)
class EnvSpec:
    """What the runtime needs to know about every replica: how its observations and actions are stored."""

    obs: ObsLayout  # what each row stores (with --critic global, the agent's observation and the state)
    action: ActionSpec
    in_loop: bool = False  # an AsyncEnv, which only the event loop can step
    # A PettingZoo ParallelEnv's agents, each a row of the storage (empty: a single-agent env).
    agents: tuple[str, ...] = ()
    agent_id: bool = False  # --agent-id: each agent's observation carries its one-hot index
    # --critic global: the global state's space and where it comes from (parallel.STATE_METHOD or
    # STATE_OF_OBSERVATIONS), and the layout of the agent's own observation, which the actor reads.
    state_space: gym.spaces.Box | None = None
    state_source: str = ""
    actor_obs: ObsLayout | None = None

    @classmethod
    def from_spaces(cls, obs_space: gym.Space, action_space: gym.Space, in_loop: bool = False,
                    masks: bool = True) -> EnvSpec:
        """Raise spaces.UnsupportedSpace (one sentence) for a space the runtime cannot handle. With
        `masks`, an `action_mask` key of a Dict observation masks the actions."""
        action = ActionSpec.from_space(action_space)
        return cls(_layout(obs_space, action, masks), action, in_loop)

    @classmethod
    def of_parallel_env(cls, env: Any, agent_id: bool = False, global_state: bool = False,
                        masks: bool = True) -> EnvSpec:
        """The spec of a ParallelEnv's rows; raise parallel.MultiAgentError or spaces.UnsupportedSpace."""
        agents, obs_space, action_space = agent_spaces(env)
        state = global_state_space(env, agents, obs_space) if global_state else None
        if agent_id:
            obs_space = with_agent_id(obs_space, len(agents))
        action = ActionSpec.from_space(action_space)
        spec = cls(_layout(obs_space, action, masks), action, False, agents, agent_id)
        if state is None:
            return spec
        if GLOBAL_STATE_KEY in spec.obs.keys:
            raise MultiAgentError(f"the agents' observations have a key {GLOBAL_STATE_KEY!r}, the name "
                                  "--critic global stores the env's state under; rename it, or use --critic "
                                  "local.")
        return dataclasses.replace(spec, obs=spec.obs.paired_with(GLOBAL_STATE_KEY, state[0]),
                                   state_space=state[0], state_source=state[1], actor_obs=spec.obs)

    @property
    def policy_obs(self) -> ObsLayout:
        """What the actor reads, and `Trainer.act` and eval encode: the agent's own observation."""
        return self.obs if self.actor_obs is None else self.actor_obs

    @property
    def critic_keys(self) -> tuple[str, ...]:
        """The keys the critic reads with --critic global (with --agent-id, MAPPO's agent-specific global
        state at its simplest: the state and the agent's index); empty when it reads the actor's."""
        if not self.state_source:
            return ()
        return (GLOBAL_STATE_KEY, AGENT_ID_KEY) if self.agent_id else (GLOBAL_STATE_KEY,)

    def describe_state(self) -> str:
        """Where --critic global's state comes from, as a user reads it ("" with --critic local)."""
        if not self.state_source:
            return ""
        what = "the env's state()" if self.state_source == STATE_METHOD else \
            "the agents' observations concatenated (the env has no state())"
        field = self.obs.fields[-1]
        return f"the critic reads {what}, {field.shape} {field.dtype}"

    @property
    def rows_per_env(self) -> int:
        """Storage rows each env replica occupies: one per agent."""
        return max(1, len(self.agents))

    def describe(self) -> str:
        """As a user reads it: "observations (4,) float32, 2 actions"."""
        agents = f"{len(self.agents)} agents, each with " if self.agents else ""
        state = f"; {self.describe_state()}" if self.state_source else ""
        return f"{agents}observations {self.policy_obs.describe()}, {self.action.describe()}{state}"


def _layout(obs_space: gym.Space, action: ActionSpec, masks: bool) -> ObsLayout:
    """The observation layout, its `action_mask` key a mask over `action` when `masks` and it has one."""
    if not (masks and has_mask_key(obs_space)):
        return ObsLayout.from_space(obs_space)
    if action.kind not in ("discrete", "multi_discrete"):
        raise UnsupportedSpace(f"the env offers an action mask, which restricts Discrete and MultiDiscrete "
                               f"actions, and its actions are {action.describe()}; pass --action-mask off to "
                               "train without the mask.")
    return ObsLayout.from_space(obs_space, action.sizes)


def agent_observation(spec: EnvSpec, obs: dict[str, Any], agent: str) -> Any:
    """Agent `agent`'s observation in a ParallelEnv's `obs` (by agent), as the agent's row stores it."""
    index = spec.agents.index(agent)
    return add_agent_id(obs[agent], index, len(spec.agents)) if spec.agent_id else obs[agent]


def row_observations(spec: EnvSpec, env: Any, obs: dict[str, Any], agents: tuple[str, ...]) -> list[Any]:
    """The observation each row of `agents` stores after a reset or step of ParallelEnv `env` that
    returned `obs`: the agent's own, paired with the env's global state with --critic global (one state,
    taken once, for every row)."""
    own = [agent_observation(spec, obs, agent) for agent in agents]
    if not spec.state_source:
        return own
    assert spec.state_space is not None
    state = global_state(env, spec.state_source, obs, spec.agents, spec.state_space)
    return [(mine, state) for mine in own]


def resolve_env(env: str | Callable[[], Any], config: TrainConfig | None = None) -> EnvFactory:
    """Validate `env` and return the factory workers will use; raise ConfigError with a fix.

    `config` supplies `--env-kwargs`, the frame options and env-family options (the `--atari-*` flags);
    without it they take their defaults.
    """
    factory = _resolve(env, config)
    if factory.frames is not None:
        factory.frames.require_opencv()
    return factory


def _resolve(env: str | Callable[[], Any], config: TrainConfig | None) -> EnvFactory:
    factory = _resolve_source(env, config)
    if config is None:
        return factory
    if config.football_players != 1 and factory.football is None:
        raise ConfigError(f"--football-players controls several players of a gfootball/<scenario> game, and "
                          f"{factory.name!r} is not one (EnvPool's gfootball tasks control one player); drop "
                          "it.")
    return dataclasses.replace(factory, agent_id=config.agent_id, global_state=config.critic == "global",
                               action_mask=config.action_mask)


def _resolve_source(env: str | Callable[[], Any], config: TrainConfig | None) -> EnvFactory:
    kwargs = tuple(sorted((config.env_kwargs if config is not None else {}).items()))
    frames = _frame_options(config)
    if callable(env):
        return EnvFactory(factory=env, kwargs=kwargs, frames=frames)
    if not isinstance(env, str) or not env:
        raise ConfigError(f"--env must be a gymnasium id or 'package.module:factory', got {env!r}.")
    if env.startswith(ENVPOOL_PREFIX):
        return EnvFactory(engine=_envpool_spec(env.removeprefix(ENVPOOL_PREFIX), dict(kwargs), config))
    if ":" in env:
        module_name, _, attr = env.partition(":")
        if not module_name or not attr:
            raise ConfigError(f"--env {env!r} needs a module and a callable around the colon, as in "
                              "'mymodule:make_env' (or a package and a gymnasium id, as in "
                              "'highway_env:highway-fast-v0').")
        module = _import_module(module_name, env)
        if callable(getattr(module, attr, None)):
            return EnvFactory(factory=_by_reference(module_name, attr, getattr(module, attr)), kwargs=kwargs,
                              frames=frames)
        if attr in gym.registry:  # gymnasium's "package:EnvId": importing the package registered it
            return EnvFactory(env_id=attr, module=module_name, kwargs=kwargs, frames=frames)
        raise ConfigError(f"--env {env!r}: module {module_name!r} has no callable {attr!r} and registers "
                          f"no gymnasium id {attr!r}.")
    if is_football_id(env):
        if frames is not None:
            raise ConfigError(f"--frame-size, --grayscale and --frame-stack do not apply to {env}: its "
                              "observation is set by --football-representation (extracted: 4 stacked "
                              "super-mini-maps); drop them.")
        spec = _football_spec(env, config)
        require_gfootball()
        return EnvFactory(env_id=env, football=spec)
    _register_optional_envs(env)
    if env not in gym.registry:
        hint = _unknown_id_hint(env)
        raise ConfigError(f"unknown env id {env!r}: it is not a registered gymnasium id.{hint}")
    if is_atari_id(env):
        size, stack = _frame_shape(config)
        return EnvFactory(env_id=env, engine=ale_spec(env, dict(kwargs), _atari_options(config), size, stack))
    return EnvFactory(env_id=env, kwargs=kwargs, frames=frames)


def _unknown_id_hint(env_id: str) -> str:
    """What may fix an unknown id: a close registered id, or the package that would register it."""
    if is_atari_id(env_id) and RAM_ID.search(env_id):
        plain = RAM_ID.sub("-", env_id)
        return (f" ale-py has no -ram ids: RAM observations come from gymnasium's own ALE env, "
                f"--env ale_py:{plain} --env-kwargs obs_type=ram.")
    package = registering_package(env_id)
    # An id of a well-known package is compared with that package's ids only (ALE/... with ALE/...).
    ids = [i for i in gym.registry if package is None or registering_package(i) == package]
    close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if package is not None:
        top = package.split(".")[0]
        return hint if importlib.util.find_spec(top) is not None else \
            f"{hint} Its ids come from {top!r}, which is not installed."
    prefix = env_id.split("-")[0].split("/")[0].lower()  # popgym-..., MiniWorld-...: the package's name
    if prefix.isidentifier() and importlib.util.find_spec(prefix) is not None:
        return f"{hint} If package {prefix!r} registers it when imported, name it: --env {prefix}:{env_id}."
    return f"{hint} If a package registers it when imported, name it: --env <package>:{env_id}."


def _envpool_spec(task_id: str, kwargs: dict[str, Any], config: TrainConfig | None) -> EnvPoolSpec:
    try:
        envpool = import_envpool()
    except ImportError as exc:
        raise ConfigError(f"--env envpool:{task_id}: {exc}") from None
    tasks = envpool.list_all_envs()
    if task_id not in tasks:
        close = difflib.get_close_matches(task_id, tasks, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else " `python -c 'import envpool; " \
            "print(envpool.list_all_envs())'` lists them."
        raise ConfigError(f"unknown EnvPool task {task_id!r}.{hint}")
    atari = _atari_options(config) if is_envpool_atari(task_id) else None
    size, stack = _frame_shape(config)
    grayscale = config is not None and config.grayscale
    return envpool_spec(task_id, kwargs, atari, size, grayscale, stack)


def _frame_shape(config: TrainConfig | None) -> tuple[tuple[int, int] | None, int | None]:
    """--frame-size and --frame-stack as given (None: not given)."""
    if config is None:
        return None, None
    size = None if config.frame_size is None else (int(config.frame_size[0]), int(config.frame_size[1]))
    return size, config.frame_stack


def _frame_options(config: TrainConfig | None) -> FrameOptions | None:
    size, stack = _frame_shape(config)
    if size is None and stack in (None, 1) and not (config is not None and config.grayscale):
        return None
    return FrameOptions(size, config is not None and config.grayscale, stack or 1)


def _atari_options(config: TrainConfig | None) -> AtariOptions:
    if config is None:
        return AtariOptions()
    return AtariOptions(sticky=config.atari_sticky, episodic_life=config.atari_episodic_life,
                        fire_reset=config.atari_fire_reset, noop_max=config.atari_noop_max)


def _football_spec(env_id: str, config: TrainConfig | None) -> FootballSpec:
    if config is None:
        return parse_football_id(env_id)
    return parse_football_id(env_id, config.football_representation, config.football_rewards,
                             config.football_players)


def _import_module(module_name: str, target: str) -> Any:
    # The current directory is importable, as for `python -m`, so `myenvs:make` just works.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for --env {target!r}: {exc}") from None
    except Exception as exc:  # a syntax error, or the module's own code raised while it was imported
        raise ConfigError(f"importing module {module_name!r} for --env {target!r} failed with "
                          f"{type(exc).__name__}: {exc}; fix the module (`python -c 'import {module_name}'` "
                          "shows the traceback).") from None


def registering_package(env_id: str) -> str | None:
    """The package that registers `env_id` when imported ("minigrid" for MiniGrid-...), if well known."""
    return next((module for prefixes, module in _REGISTERING_PACKAGES if env_id.startswith(prefixes)), None)


def _register_optional_envs(env_id: str) -> None:
    """Import the package that registers `env_id`, for the well-known ones (quietly if it is missing)."""
    if env_id in gym.registry:
        return
    package = registering_package(env_id)
    if package is None:
        return
    try:
        module = importlib.import_module(package)
    except ImportError:
        return
    if package == "ale_py":
        gym.register_envs(module)
    elif package == "minatar.gym":
        module.register_envs()  # MinAtar registers only when asked
