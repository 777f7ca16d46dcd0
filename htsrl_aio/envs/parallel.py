"""Multi-agent envs: PettingZoo's Parallel API (`possible_agents`, `observation_space(agent)`,
`action_space(agent)`, `reset(seed=)`, `step(actions)` returning five dicts by agent).

A ParallelEnv with A agents is A rows of the storage (row = env_index * A + agent_index): one shared
policy acts for every agent (parameter sharing), so the agents must have the same spaces. How its rows
are stepped together is `backends/agent_group.py`'s. AEC envs are converted with PettingZoo's own
`aec_to_parallel` where PettingZoo says that applies. Agents may leave an episode before it ends and
join one under way, or start it later than the reset: a row's steps without its agent are masked out of
learning.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

AGENT_ID_KEY = "agent_id"  # --agent-id: the one-hot agent index, an observation key of its own
AGENT_OBS_KEY = "obs"  # --agent-id: the agent's own observation beside it, when it is not a Dict


class MultiAgentError(ValueError):
    """A multi-agent env htsrl-aio cannot train as it is; the message names the fix."""


def is_parallel_env(env: Any) -> bool:
    """PettingZoo's Parallel API: agents, per-agent spaces as methods, and no AEC turn order."""
    return (hasattr(env, "possible_agents") and callable(getattr(env, "observation_space", None))
            and not is_aec_env(env))


def is_aec_env(env: Any) -> bool:
    return hasattr(env, "possible_agents") and hasattr(env, "agent_iter")


def as_parallel(env: Any) -> Any:
    """An AEC env as a ParallelEnv (PettingZoo's `aec_to_parallel`); raise MultiAgentError when
    PettingZoo says its agents do not act at the same time."""
    if not env.metadata.get("is_parallelizable", False):
        raise MultiAgentError(
            f"{env.metadata.get('name', type(env).__name__)} is a PettingZoo AEC env whose agents take "
            "turns (its metadata does not say is_parallelizable), so it cannot be stepped as a "
            "ParallelEnv; give a factory of its parallel_env, or of an env whose agents act at the same "
            "time.")
    from pettingzoo.utils.conversions import aec_to_parallel

    return aec_to_parallel(env)


def agent_spaces(env: Any) -> tuple[tuple[str, ...], gym.Space, gym.Space]:
    """(agents, the observation space, the action space) every agent shares; raise MultiAgentError
    when there are no agents or their spaces differ."""
    agents = tuple(env.possible_agents)
    if not agents:
        raise MultiAgentError(f"{type(env).__name__} has no possible_agents; a ParallelEnv lists them.")
    obs, act = env.observation_space(agents[0]), env.action_space(agents[0])
    for agent in agents[1:]:
        if env.observation_space(agent) != obs or env.action_space(agent) != act:
            raise MultiAgentError(
                f"agents {agents[0]!r} and {agent!r} have different observation or action spaces, and "
                "htsrl-aio trains one policy shared by every agent; pad them to one space with "
                "SuperSuit's pad_observations_v0 and pad_action_space_v0.")
    return agents, obs, act


def arrival_problem(now: Any, before: set[str], possible: tuple[str, ...], obs: Any, call: str) -> str | None:
    """What is wrong with the agents in `now` (env.agents after `call`) that were not in `before`, or
    None: after a reset there must be some, each must be a possible agent (each has a fixed row), and
    `call` must have returned its observation (what its row acts on next)."""
    if call == "reset()" and not now:
        return ("reset() started an episode with no agents in env.agents; a ParallelEnv's reset puts the "
                "agents that act first in env.agents.")
    arrived = set(now) - before
    if strangers := sorted(arrived - set(possible)):
        return (f"env.agents holds {strangers}, which are not in possible_agents {list(possible)}; each "
                "agent has a fixed row, so possible_agents must list every agent that can ever take part.")
    if unseen := sorted(agent for agent in arrived if not (isinstance(obs, dict) and agent in obs)):
        return (f"agents {unseen} are in env.agents after {call} but it returned no observation for them; "
                "return the first observation of an agent in the reset or step after which it takes part.")
    return None


def with_agent_id(space: gym.Space, agents: int) -> gym.spaces.Dict:
    """The observation space of one agent with its one-hot index (--agent-id) as a key of its own."""
    one_hot = gym.spaces.Box(0.0, 1.0, (agents,), np.float32)
    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({**space.spaces, AGENT_ID_KEY: one_hot})
    return gym.spaces.Dict({AGENT_OBS_KEY: space, AGENT_ID_KEY: one_hot})


def add_agent_id(obs: Any, index: int, agents: int) -> dict[str, Any]:
    """`obs` of agent `index` as `with_agent_id`'s space has it."""
    one_hot = np.zeros(agents, np.float32)
    one_hot[index] = 1.0
    if isinstance(obs, dict):
        return {**obs, AGENT_ID_KEY: one_hot}
    return {AGENT_OBS_KEY: obs, AGENT_ID_KEY: one_hot}


# --critic global (MAPPO): every agent row also stores its env's global state under this key, which
# only the critic reads. The row's observation is then (agent's observation, global state).
GLOBAL_STATE_KEY = "global_state"
STATE_METHOD = "state()"  # the global state is the env's own state(), of its state_space
STATE_OF_OBSERVATIONS = "observations"  # ... else every agent's observation, concatenated


def global_state_space(env: Any, agents: tuple[str, ...], obs_space: gym.Space) -> tuple[gym.spaces.Box, str]:
    """The global state's space and where it comes from: the env's `state_space` (PettingZoo's) when it
    has one, else the concatenation of the agents' Box observations; raise MultiAgentError otherwise."""
    state_space = getattr(env, "state_space", None)
    if isinstance(state_space, gym.spaces.Box):
        return state_space, STATE_METHOD
    if state_space is not None:
        raise MultiAgentError(f"--critic global reads the env's state(), whose state_space is {state_space}, "
                              "not a Box; give the env a Box state_space, or use --critic local.")
    if not isinstance(obs_space, gym.spaces.Box):
        raise MultiAgentError(f"--critic global needs the env's global state, and {type(env).__name__} has "
                              "no state_space while its agents' observations are "
                              f"{type(obs_space).__name__}, not Box, so they cannot be concatenated instead; "
                              "give the env a state() and state_space (PettingZoo's), or use --critic local.")
    low, high = (np.tile(bound.reshape(-1), len(agents)) for bound in (obs_space.low, obs_space.high))
    return gym.spaces.Box(low, high, low.shape, obs_space.dtype), STATE_OF_OBSERVATIONS


def global_state(env: Any, source: str, obs: dict[str, Any], agents: tuple[str, ...],
                 space: gym.spaces.Box) -> np.ndarray:
    """The env's global state after a reset or step that returned `obs`: its state(), or its agents'
    observations in `agents` order (zeros for an agent that has left, which returns none)."""
    if source == STATE_METHOD:
        return np.asarray(env.state())
    size = space.shape[0] // len(agents)
    return np.concatenate([np.asarray(obs[agent], space.dtype).reshape(-1) if agent in obs
                           else np.zeros(size, space.dtype) for agent in agents])
