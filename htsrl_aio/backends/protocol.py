"""The env-backend protocol: how the schedule steps env replicas, in step-ticket terms.

A backend hosts `num_envs` `Replica`s (backends/replica.py) somewhere (worker processes, the event loop,
C++ vector engines, Ray actors) and answers per env id:

- `reset(ticket)`: start env `ticket.env`'s episode; its observation becomes the observation of
  `ticket`.
- `step(ticket, action)`: act in env `ticket.env` at `ticket`; resolves to a `StepResult`. The next
  observation becomes that of ticket (rollout, env, step + 1), row `step + 1` of the rollout's
  storage (the last row is the bootstrap observation). When the step ended an episode by a time
  limit, its final observation is left in the env's row of `obs.final`, for the value the learner
  bootstraps from.
- `get_state(env)` / `set_state(env, state)`: checkpoint and restore an idle replica.

The observation of ticket (j, i, t) lives at row t, env i of storage j % 2 (`obs_slot_of`): the
backend writes it in place (shared memory for worker processes; a remote host ships it back and the
backend writes it on arrival, as ray_backend.py does), and only ids, actions and rewards travel. A
backend may carry many replicas' commands in one message (batching is its own business); the
schedule only ever has one command in flight per env, and results are matched by env id, never by
arrival order. Restarts after failures are counted in `restarts` through a `RestartBudget`. A reset or
step with no answer within `BackendArgs.env_timeout` is a failure like an exception: name the env and
the ticket, or (restarts on) replace the replica or whatever hosts it.

To add a backend: implement this protocol around `Replica` (its life cycle is already written), add
it to `BACKENDS` in backends/registry.py, and run tests/test_determinism_spaces.py with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from htsrl_aio.backends.replica import ReplicaState
from htsrl_aio.envs.factory import EnvFactory, EnvSpec
from htsrl_aio.ipc.shm import SharedArray
from htsrl_aio.steps import ObsSlot, StepTicket


class ObsSlots(Protocol):
    """Where a host finds the observation slots a command names (`ObsBuffers`, or a host's own)."""

    def slot(self, buf: int, row: int, env: int) -> ObsSlot: ...

    def final_slot(self, env: int) -> ObsSlot: ...


@dataclass(frozen=True)
class ObsBuffers:
    """Where observations go: per storage, per key, an array (T + 1, N, *shape); and per key the
    final observation of each env's last time-limit truncation, (N, *shape)."""

    storages: tuple[Mapping[str, SharedArray], ...]
    final: Mapping[str, SharedArray]

    def slot(self, buf: int, row: int, env: int) -> ObsSlot:
        return {key: array.array[row, env] for key, array in self.storages[buf].items()}

    def final_slot(self, env: int) -> ObsSlot:
        return {key: array.array[env] for key, array in self.final.items()}


def obs_slot_of(ticket: StepTicket) -> tuple[int, int]:
    """(storage index, row) holding the observation of `ticket`."""
    return ticket.rollout % 2, ticket.step


@dataclass(frozen=True)
class BackendArgs:
    """What every backend is built from."""

    factory: EnvFactory
    spec: EnvSpec
    num_envs: int
    rollout_len: int  # steps per rollout: each storage holds rollout_len + 1 observation rows
    run_seed: int
    buffers: ObsBuffers
    workers: int = 1  # worker processes (process backend)
    engine_batch: int | None = None  # envs per C++ engine (engine backend; None: all in one)
    engine_threads: int | None = None  # C++ threads of each engine (engine backend)
    restart_on_error: bool = False  # --on-env-error restart
    on_restart: Callable[[str, str], None] = lambda message, details: None
    # --env-timeout: seconds a reset or step may take before it counts as an env failure (None: no limit)
    env_timeout: float | None = None
    ray_address: str | None = None  # ray backend: None starts a local Ray instance; "auto" or an address
    ray_actors: int | None = None  # ray backend: actors hosting the envs (None: the CPUs Ray reports)
    envs_per_actor: int | None = None  # ray backend: another way to say ray_actors


class EnvBackend(Protocol):
    restarts: int  # envs re-created after a failure (--on-env-error restart)

    async def start(self) -> None:
        """Build every replica; raise EnvError (one sentence) if that fails."""
        ...

    def reset(self, ticket: StepTicket) -> asyncio.Future[None]: ...

    def step(self, ticket: StepTicket, action: Any) -> asyncio.Future[Any]: ...

    def get_state(self, env_id: int) -> asyncio.Future[ReplicaState]: ...

    def set_state(self, env_id: int, state: ReplicaState) -> asyncio.Future[str | None]:
        """Resolves to None, or the reason the env state was not loaded (the tracker always is)."""
        ...

    async def aclose(self) -> None:
        """Stop every replica and release what the backend holds, however the run ended."""
        ...


def describe_ticket(ticket: StepTicket) -> str:
    """Where in the run a command was, for error messages."""
    return f"(rollout {ticket.rollout}, step {ticket.step})"


def as_wire_action(action: np.ndarray) -> Any:
    """An action row as it crosses a pipe: a plain int for a Discrete action (cheapest to pickle)."""
    return action.item() if action.shape == () else action
