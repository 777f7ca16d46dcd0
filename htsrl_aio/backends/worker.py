"""The env worker process: hosts a slice of the replicas and runs their commands, transport only.

It imports no torch. Observations are written straight into the rollout storage's shared memory at
the slot the command names; only ids, actions, rewards and flags travel over the pipe. The life cycle
itself (episodes, seeds, checks, restarts) is the `Replica`'s, run to completion without an event loop.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal, NamedTuple

from htsrl_aio.backends.protocol import ObsBuffers, ObsSlots
from htsrl_aio.backends.replica import Replica, ReplicaState, run_to_completion
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
    replicas: dict[int, Replica] = {}
    try:
        conn.send([Reply("building", None)])
        for env_id in args.env_ids:
            replicas[env_id] = Replica(env_id, args.factory, args.spec.obs, args.spec.action, args.run_seed,
                                       args.restart_on_error, args.lineage)
        conn.send([Reply("ready", None)])
        while True:
            commands = conn.recv()  # a list of Commands, or ("close",)
            if commands == ("close",):
                return
            conn.send([reply_to(cmd, replicas[cmd.env_id], buffers) for cmd in commands])
    except Exception as exc:  # env construction failed, or the parent went away
        with contextlib.suppress(OSError):
            conn.send([Reply("error", None, None, f"{type(exc).__name__}: {exc}", traceback.format_exc())])
    finally:
        for replica in replicas.values():
            run_to_completion(replica.close())
        for array in attached:
            array.close()


def reply_to(cmd: Command, replica: Replica, buffers: ObsSlots) -> Reply:
    """Run one command against its replica, observations in the slots it names (every host's core), and
    say how it went."""
    try:
        return Reply("done", cmd.env_id, _run(cmd, replica, buffers))
    except Exception as exc:
        return Reply("error", cmd.env_id, None, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def _run(cmd: Command, replica: Replica, buffers: ObsSlots) -> Any:
    env_id = cmd.env_id
    if cmd.kind == "get_state":
        return replica.get_state()
    if cmd.kind == "set_state":
        assert cmd.state is not None
        return replica.set_state(cmd.state)
    here = buffers.slot(cmd.buf, cmd.row, env_id)
    if cmd.kind == "reset":
        return run_to_completion(replica.reset(here))
    following, final = buffers.slot(cmd.buf, cmd.row + 1, env_id), buffers.final_slot(env_id)
    if cmd.kind == "lost_step":  # its worker died: this env is new, and the step asked of the old one is lost
        return run_to_completion(replica.lost_step(here, following, final))
    return run_to_completion(replica.step(cmd.action, here, following, final))
