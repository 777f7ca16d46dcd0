"""AgentGroup: the A agents of one PettingZoo ParallelEnv as A rows, each a `Replica` of its own.

As an `EngineGroup` steps several envs in lockstep while each env's Replica awaits an `EngineSlot`, an
AgentGroup steps one ParallelEnv once every one of its agents has its action, while each agent's row
keeps its own Replica awaiting an `AgentSlot`. So seeds, checks, episode accounting and the final
observation of a truncation are the single-agent code, row by row, and which agent's action arrived
first changes nothing: the env steps with all of them, by agent name.

Row = env_index * A + agent_index (A = len(possible_agents)). Every row of an env resets together, once
the env's episode ends, with the reset seed of the env's first row. An agent that leaves the episode
before it ends (absent from `env.agents` after its last step, as in Knights-Archers-Zombies) gets that
last step as a `Left`; its row then still asks to step with the others, which steps nothing of the env
for it, and gets `Absent` (masked out by the learner) until the episode ends and every row resets. An
agent not in the episode yet (absent from `env.agents` after the reset) is `Absent` the same way until
the step after which it is in `env.agents`: that step is its row's `Joined`, which stores the agent's
first observation and no transition, and the row's next step is the first of the agent's episode.
The waiter a slot returns is whatever the host awaits: an asyncio future on the event loop, a `Parked`
result in a worker process or a Ray actor, which have no event loop and resume the replicas whose
results arrived (`HostedReplicas`, worker.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Generator, Iterable
from typing import Any, NamedTuple, Protocol

from htsrl_aio.backends import env_state
from htsrl_aio.envs.factory import EnvFactory, EnvSpec, row_observations
from htsrl_aio.envs.parallel import MultiAgentError, arrival_problem


class Waiter(Protocol):
    """What a slot returns and its Replica awaits: asyncio.Future, or Parked."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exception: BaseException) -> None: ...


class Parked:
    """A result that arrives once the other agents of the env have asked too, for a host without an
    event loop: awaiting it yields the Parked itself until it is done, and the host resumes the
    coroutine then."""

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._exception: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._result, self._done = result, True

    def set_exception(self, exception: BaseException) -> None:
        self._exception, self._done = exception, True

    def __await__(self) -> Generator[Parked, None, Any]:
        while not self._done:
            yield self
        if self._exception is not None:
            raise self._exception
        return self._result


class Left(NamedTuple):
    """The last step of an agent that left an episode which goes on for others: the 5-tuple as a
    single-agent env returns it, after which the row waits for the episode's end without resetting."""

    step: tuple[Any, Any, bool, bool, dict]


class Absent(NamedTuple):
    """A step of a row whose agent has left: nothing of it happened in the env. `ended`: the env's
    episode ended at this step, so the row resets with the others."""

    ended: bool


class Joined(NamedTuple):
    """The step of an episode under way after which the row's agent is in it (for the first time, or
    again after it left): not a transition of the agent, which took no action, but its first observation.
    Whatever reward the env gave it at that step belongs to no action, and is not counted."""

    obs: Any


class AgentGroup:
    """One ParallelEnv whose agents' resets and steps are gathered, then made in one call."""

    def __init__(self, factory: EnvFactory, spec: EnvSpec, new_waiter: Callable[[], Waiter]) -> None:
        self.spec = spec
        self.agents = spec.agents
        self._factory = factory
        self._new_waiter = new_waiter
        self._failed = False  # the env raised: --on-env-error restart builds it again (`restart`)
        self._resets: dict[int, tuple[int, Waiter]] = {}
        self._steps: dict[int, tuple[Any, Waiter]] = {}
        self._closed = False
        self.env = factory()

    def reset(self, index: int, seed: int) -> Waiter:
        waiter = self._ask(self._resets, index, seed)
        if len(self._resets) == len(self.agents):
            requests, self._resets = self._resets, {}
            self._answer(requests, functools.partial(self._reset_all, requests[0][0]))
        return waiter

    def step(self, index: int, action: Any) -> Waiter:
        waiter = self._ask(self._steps, index, action)
        if len(self._steps) == len(self.agents):
            requests, self._steps = self._steps, {}
            actions = {self.agents[i]: action for i, (action, _) in sorted(requests.items())}
            self._answer(requests, functools.partial(self._step_all, actions))
        return waiter

    def _ask(self, requests: dict[int, tuple[Any, Waiter]], index: int, value: Any) -> Waiter:
        assert index not in requests, f"agent {self.agents[index]!r} asked twice in one step"
        waiter = self._new_waiter()
        requests[index] = (value, waiter)
        return waiter

    def _answer(self, requests: dict[int, tuple[Any, Waiter]], call: Callable[[], list[Any]]) -> None:
        try:
            results = call()
        except Exception as exc:  # every agent's row fails with it
            self._failed = True
            for _, waiter in requests.values():
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for index, (_, waiter) in requests.items():
            if not waiter.done():  # a collector cancelled meanwhile has cancelled its future
                waiter.set_result(results[index])

    def _reset_all(self, seed: int) -> list[tuple[Any, dict]]:
        obs, infos = self.env.reset(seed=seed)
        present = self._arrivals(set(), obs, "reset()")
        rows = dict(zip(present, row_observations(self.spec, self.env, obs, present)))
        return [(rows[agent], _info(infos, agent)) if agent in rows else Absent(False)
                for agent in self.agents]

    def _step_all(self, actions: dict[str, Any]) -> list[Any]:
        """Step the env with the actions of the agents still in its episode (which of them are is the
        env's own `agents`, so it travels with a checkpointed env); each row's result, by row."""
        live = set(self.env.agents)
        obs, rewards, terminations, truncations, infos = self.env.step(
            {agent: action for agent, action in actions.items() if agent in live})
        ended = not self.env.agents
        joined = set(self._arrivals(live, obs, "step()"))
        results: list[Any] = []
        # With --critic global every row of the step carries the env's state at this step (a truncated
        # episode's bootstrap value is taken from it).
        stepped = tuple(agent for agent in self.agents if agent in live or agent in joined)
        rows = dict(zip(stepped, row_observations(self.spec, self.env, obs, stepped)))
        for agent in self.agents:
            if agent in joined:
                results.append(Joined(rows[agent]))
                continue
            if agent not in live:
                results.append(Absent(ended))
                continue
            terminated = bool(terminations.get(agent, False))
            # An episode that ends for the env ends for every agent: cut, if it did not end it itself.
            truncated = bool(truncations.get(agent, False)) or (ended and not terminated)
            step = (rows[agent], rewards[agent], terminated, truncated, _info(infos, agent))
            results.append(step if ended or agent in self.env.agents else self._left(agent, step))
        return results

    def _arrivals(self, before: set[str], obs: Any, call: str) -> tuple[str, ...]:
        """The agents in `env.agents` after `call` that were not in `before`, in possible_agents order;
        MultiAgentError with `arrival_problem`'s sentence when they cannot be rows."""
        if problem := arrival_problem(self.env.agents, before, self.agents, obs, call):
            raise MultiAgentError(problem)
        return tuple(agent for agent in self.agents if agent in self.env.agents and agent not in before)

    def _left(self, agent: str, step: tuple[Any, Any, bool, bool, dict]) -> Left:
        if not (step[2] or step[3]):
            raise MultiAgentError(f"agent {agent!r} left env.agents without terminating or truncating; "
                                  "a ParallelEnv sets terminations[agent] or truncations[agent] at the step "
                                  "its agent leaves.")
        return Left(step)

    def restart(self) -> None:
        """A new env in place of one that raised (every row of it asks; the first one builds it)."""
        if not self._failed:
            return
        with contextlib.suppress(Exception):
            self.env.close()
        self.env = self._factory()
        self._failed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.env.close()


class AgentSlot:
    """Agent `index` of an AgentGroup, as the env its Replica awaits."""

    def __init__(self, group: AgentGroup, index: int) -> None:
        self.group = group
        self.index = index

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Waiter:
        assert seed is not None, "the runtime seeds every reset"
        return self.group.reset(self.index, seed)

    def step(self, action: Any) -> Waiter:
        return self.group.step(self.index, action)

    def close(self) -> None:
        self.group.close()

    def restart(self) -> None:
        self.group.restart()

    def get_state(self) -> bytes | None:
        """The first agent's row carries the env's state, captured as any env's is (None where it
        cannot be saved); the other rows carry none."""
        return env_state.capture(self.group.env) if self.index == 0 else None

    def set_state(self, state: bytes | None) -> None:
        if self.index != 0:
            return
        if state is None:
            raise env_state.NotRestored("the multi-agent env's state could not be saved")
        env = env_state.restore(state, self.group.env)
        if env is not self.group.env:
            with contextlib.suppress(Exception):
                self.group.env.close()
            self.group.env = env


def row_factories(factory: EnvFactory, spec: EnvSpec, rows: Iterable[int],
                  new_waiter: Callable[[], Waiter]) -> dict[int, Callable[[], Any]]:
    """What builds the env of each storage row in `rows`: the factory itself for a single-agent env;
    for a ParallelEnv, the row's slot of its env's group (each group built once, by its first row)."""
    if not spec.agents:
        return dict.fromkeys(rows, factory)
    per_env = spec.rows_per_env
    groups: dict[int, AgentGroup] = {}

    def slot(row: int) -> AgentSlot:
        env = row // per_env
        if env not in groups:
            groups[env] = AgentGroup(factory, spec, new_waiter)
        return AgentSlot(groups[env], row % per_env)

    return {row: functools.partial(slot, row) for row in rows}


def _info(infos: Any, agent: str) -> dict:
    info = infos.get(agent) if isinstance(infos, dict) else None
    return info if isinstance(info, dict) else {}
