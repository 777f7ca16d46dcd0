"""The env worker process: hosts a slice of the replicas and runs their commands, transport only.

It imports no torch. Observations are written straight into the rollout storage's shared memory at
the slot the command names; only ids, actions, rewards and flags travel over the pipe. The life cycle
itself (episodes, seeds, checks, restarts) is the `Replica`'s, run to completion without an event loop.
`HostedReplicas` is what a host runs, here and on a Ray actor alike.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal, NamedTuple

from htsrl_aio.backends.agent_group import Parked, row_factories
from htsrl_aio.backends.protocol import ObsBuffers, ObsSlots
from htsrl_aio.backends.replica import ASYNC_IN_WORKER, Replica, ReplicaState, run_to_completion
from htsrl_aio.envs.factory import EnvFactory, EnvSpec
from htsrl_aio.ipc.shm import SharedArray, SharedArraySpec

CommandKind = Literal["reset", "step", "lost_step", "get_state", "set_state", "close"]


class Command(NamedTuple):
    """Parent -> worker, in lists (the commands of one loop iteration). `buf`/`row`: the storage slot
    of the observation acted on (or reset into)."""

    kind: CommandKind
    env_id: int = -1
    buf: int = 0
    row: int = 0
    action: Any = None
    state: ReplicaState | None = None
    absent: bool = False  # a lost_step of a multi-agent row whose agent was out of the episode


class Reply(NamedTuple):
    """Worker -> parent, in lists (one per list of commands): "building" as it starts building its
    replicas, "ready" once every one is built, "done" with a command's value, "error"."""

    kind: Literal["building", "ready", "done", "error"]
    env_id: int | None
    value: Any = None
    message: str = ""
    details: str = ""


@dataclass(frozen=True)
class WorkerArgs:
    factory: EnvFactory
    spec: EnvSpec
    env_ids: tuple[int, ...]
    storages: tuple[Mapping[str, SharedArraySpec], ...]
    final: Mapping[str, SharedArraySpec]
    run_seed: int
    restart_on_error: bool = False  # --on-env-error restart: re-create a failed env instead of stopping
    lineage: tuple[int, ...] = ()  # a worker started again after its predecessor died: fresh seeds


def worker_main(conn: Connection, args: WorkerArgs) -> None:
    attached = [SharedArray.attach(spec) for specs in (*args.storages, args.final) for spec in specs.values()]
    arrays = iter(attached)
    buffers = ObsBuffers(tuple({key: next(arrays) for key in specs} for specs in args.storages),
                         {key: next(arrays) for key in args.final})
    hosted = HostedReplicas(args.factory, args.spec, args.env_ids, args.run_seed, args.restart_on_error,
                            args.lineage)
    try:
        conn.send([Reply("building", None)])
        hosted.build()
        conn.send([Reply("ready", None)])
        while True:
            commands = conn.recv()  # a list of Commands, or ("close",)
            if commands == ("close",):
                return
            conn.send([reply for _, reply in hosted.run(commands, buffers)])
    except Exception as exc:  # env construction failed, or the parent went away
        with contextlib.suppress(OSError):
            conn.send([Reply("error", None, None, f"{type(exc).__name__}: {exc}", traceback.format_exc())])
    finally:
        hosted.close()
        for array in attached:
            array.close()


class HostedReplicas:
    """The replicas of one host's slice of the envs, and those of its commands that wait for the other
    agents of their env: what every host (a worker process, a Ray actor) runs, whatever carries its
    messages."""

    def __init__(self, factory: EnvFactory, spec: EnvSpec, env_ids: tuple[int, ...], run_seed: int,
                 restart_on_error: bool, lineage: tuple[int, ...]) -> None:
        self._made_by = (factory, spec, env_ids, run_seed, restart_on_error, lineage)
        self._replicas: dict[int, Replica] = {}
        self._waiting = WaitingAgents()

    def build(self) -> None:
        """Build every replica; those built before one fails are closed by `close`."""
        factory, spec, env_ids, run_seed, restart_on_error, lineage = self._made_by
        factories = row_factories(factory, spec, env_ids, Parked)
        for env_id in env_ids:
            self._replicas[env_id] = Replica(env_id, factories[env_id], spec.obs, spec.action, run_seed,
                                            restart_on_error, lineage)

    def run(self, commands: Iterable[Command], buffers: ObsSlots) -> list[tuple[Command, Reply]]:
        """Run the commands of one message in turn: each command answered in this message with its reply,
        those of earlier messages whose env stepped meanwhile included (a command that waits for the
        other agents of its env answers in a later message)."""
        replies = [(cmd, reply_to(cmd, self._replicas[cmd.env_id], buffers, self._waiting))
                   for cmd in commands]
        answered = [(cmd, reply) for cmd, reply in replies if reply is not None]
        return answered + self._waiting.resume()

    def close(self) -> None:
        for replica in self._replicas.values():
            run_to_completion(replica.close())


class WaitingAgents:
    """Commands of a ParallelEnv's rows that wait for the other agents of their env (a worker has no
    event loop: their replicas' coroutines are parked here, and resumed once their env has stepped)."""

    def __init__(self) -> None:
        self._parked: dict[int, tuple[Command, Coroutine[Any, Any, Any], Parked]] = {}

    def park(self, cmd: Command, coroutine: Coroutine[Any, Any, Any], parked: Parked) -> None:
        self._parked[cmd.env_id] = (cmd, coroutine, parked)

    def resume(self) -> list[tuple[Command, Reply]]:
        """Every parked command whose result arrived, with its reply (a resumed one may park again: the
        reset after its episode ended)."""
        answered: list[tuple[Command, Reply]] = []
        while ready := [env_id for env_id, (_, _, parked) in self._parked.items() if parked.done()]:
            for env_id in ready:
                cmd, coroutine, _ = self._parked.pop(env_id)
                reply = _advance(cmd, coroutine, self)
                if reply is not None:
                    answered.append((cmd, reply))
        return answered


def reply_to(cmd: Command, replica: Replica, buffers: ObsSlots, waiting: WaitingAgents) -> Reply | None:
    """Run one command against its replica, observations in the slots it names (every host's core), and
    say how it went; None while the command waits for the other agents of its env (in `waiting`)."""
    try:
        work = _run(cmd, replica, buffers)
    except Exception as exc:
        return _error(cmd, exc)
    return _advance(cmd, work, waiting)


def _advance(cmd: Command, coroutine: Coroutine[Any, Any, Any], waiting: WaitingAgents) -> Reply | None:
    try:
        awaited = coroutine.send(None)
    except StopIteration as done:
        return Reply("done", cmd.env_id, done.value)
    except Exception as exc:
        return _error(cmd, exc)
    if isinstance(awaited, Parked):
        waiting.park(cmd, coroutine, awaited)
        return None
    coroutine.close()
    return _error(cmd, TypeError(ASYNC_IN_WORKER))


def _error(cmd: Command, exc: Exception) -> Reply:
    return Reply("error", cmd.env_id, None, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def _run(cmd: Command, replica: Replica, buffers: ObsSlots) -> Coroutine[Any, Any, Any]:
    env_id = cmd.env_id
    if cmd.kind == "get_state":
        return _value(replica.get_state())
    if cmd.kind == "set_state":
        assert cmd.state is not None
        return _value(replica.set_state(cmd.state))
    here = buffers.slot(cmd.buf, cmd.row, env_id)
    if cmd.kind == "reset":
        return replica.reset(here)
    following, final = buffers.slot(cmd.buf, cmd.row + 1, env_id), buffers.final_slot(env_id)
    if cmd.kind == "lost_step":  # its worker died: this env is new, and the step asked of the old one is lost
        return replica.lost_step(here, following, final, cmd.absent)
    return replica.step(cmd.action, here, following, final)


async def _value(value: Any) -> Any:
    return value
