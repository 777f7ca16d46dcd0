"""RayBackend: replicas on Ray actors, on this machine or spread over the nodes of a cluster.

Each actor (`ReplicaHost`) hosts a contiguous group of replicas and runs the commands it is sent with
the same `HostedReplicas` and `Replica` life cycle as a worker process (a multi-agent env's rows, which
`HostedBackend._split` keeps on one actor, included). Inference, the learner and the
swap stay on the head node (this process). Only ids, actions, rewards, flags and observations travel:

- Batching: the commands issued to one actor during one event-loop iteration go in one remote call;
  the actor answers with one list of replies, matched to envs by id, so one round trip serves as many
  env steps as were ready together.
- Observations cannot go through this machine's shared memory. The actor keeps its own observation
  slots (`GroupSlots`), and its reply carries the observations it wrote, stacked per key; the head
  node writes them into the slots the tickets name (and a time-limit truncation's final observation
  into the env's final slot).
- An actor that dies (or whose node does), or that holds a command past `--env-timeout` (it is then
  killed), is a lost host (`HostedBackend`): the run stops in one sentence naming its envs, or, with
  `--on-env-error restart`, the actor is created again and its envs start over with new derived seeds.

Ray is an optional dependency: this module imports it only when a run asks for it (`import_ray`).
The env factory travels to the actors as Ray ships any argument (cloudpickle: an importable factory by
reference, so the package that defines it must be installed on every node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import socket
import threading
import traceback
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from htsrl_aio.backends.hosted import HostedBackend
from htsrl_aio.backends.protocol import BackendArgs
from htsrl_aio.backends.replica import env_error
from htsrl_aio.backends.worker import Command, HostedReplicas, Reply
from htsrl_aio.envs.factory import EnvFactory, EnvSpec
from htsrl_aio.errors import ConfigError
from htsrl_aio.ipc.marks import MarkWatchdog
from htsrl_aio.steps import ObsSlot, StepResult

# How long actors get to close their envs politely when the run ends, before they are killed.
CLOSE_TIMEOUT_S = 5.0
# An actor may take this long to be placed and build its envs even when --env-timeout is shorter (a
# worker process to start, packages to import); --env-timeout 0 waits for ever (an autoscaling cluster).
START_TIMEOUT_S = 60.0
# How long the start waits for anything to answer at --ray-address. Ray itself retries a cluster that does
# not answer for about 14 minutes (20 tries of 40 s, logging "Failed to connect to GCS" each time).
CONNECT_TIMEOUT_S = 10.0
# Ray's tries at a cluster's address (about 40 s each), which ray.init reads from this variable.
GCS_TRIES_VARIABLE = "RAY_gcs_server_port_wait_time_s"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the names in its error messages
_RAISED = re.compile(r"^[\w.]*(Error|Exception): ")  # a traceback's last line: "ModuleNotFoundError: ..."
INSTALL_HINT = 'install it with pip install "htsrl-aio[ray]"'


def import_ray() -> ModuleType:
    """The ray package, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--env-backend ray needs Ray, which is not installed; {INSTALL_HINT}.") from None
    return ray


class GroupSlots:
    """An actor's own observation slots: two rows per env of its group, and each env's final slot.

    The slot of ticket (rollout j, env i, step t) is row t of storage j % 2 (`obs_slot_of`), and row
    T of one storage holds the same observation as row 0 of the other (the swap carries it over). An
    env's observations therefore form one stream, position j*T + t, whose parity is
    ((j % 2)*T + t) % 2: alternating two rows by it keeps the observation an env acts on where its
    previous command left it, through every swap, with no copy.
    """

    def __init__(self, arrays: Mapping[str, tuple[tuple[int, ...], Any]], env_ids: tuple[int, ...],
                 rollout: int) -> None:
        self.rollout = rollout
        self._index = {env_id: i for i, env_id in enumerate(env_ids)}
        n = len(env_ids)
        self._rows = {key: np.zeros((2, n, *shape), dtype) for key, (shape, dtype) in arrays.items()}
        self._final = {key: np.zeros((n, *shape), dtype) for key, (shape, dtype) in arrays.items()}

    def slot(self, buf: int, row: int, env: int) -> ObsSlot:
        parity, i = (buf * self.rollout + row) % 2, self._index[env]
        return {key: rows[parity, i] for key, rows in self._rows.items()}

    def final_slot(self, env: int) -> ObsSlot:
        return {key: final[self._index[env]] for key, final in self._final.items()}


class HostReply(NamedTuple):
    """An actor's answer to one message: a reply per command, in order, and the observations they wrote
    (stacked per key, in the order of the replies that wrote one), and the final observations of the
    steps that a time limit cut."""

    replies: list[Reply]
    obs: dict[str, np.ndarray]
    final: dict[str, np.ndarray]


def _stack(slots: list[ObsSlot]) -> dict[str, np.ndarray]:
    return {key: np.stack([slot[key] for slot in slots]) for key in slots[0]} if slots else {}


def _wrote_final(cmd: Command, value: Any) -> bool:
    """Whether the step left a final observation that the schedule reads (see RolloutStorage.record_step)."""
    return cmd.kind != "reset" and isinstance(value, StepResult) and value.truncated and not value.terminated


class ReplicaHost:
    """The body of one Ray actor: a group of replicas, the commands of one message run in turn."""

    def __init__(self, factory: EnvFactory, spec: EnvSpec, env_ids: tuple[int, ...], run_seed: int,
                 rollout: int, restart_on_error: bool, lineage: tuple[int, ...]) -> None:
        self.hosted = HostedReplicas(factory, spec, env_ids, run_seed, restart_on_error, lineage)
        self.slots = GroupSlots(spec.obs.arrays(), env_ids, rollout)

    def start(self) -> tuple[tuple[str, str], tuple[str, str] | None]:
        """Build every replica: ((node id, node address), None), or the failure as (message, traceback)."""
        import ray

        node = (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())
        try:
            self.hosted.build()
        except Exception as exc:
            return node, (f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return node, None

    def run(self, batch: list[tuple[Command, ObsSlot | None]]) -> HostReply:
        """Run the commands; `acted`, when sent, is the observation the env stands at (the head node
        sends it when this actor cannot know it: after a restart or a loaded checkpoint). The replies are
        those `HostedReplicas.run` gives: a multi-agent env's row that waits for its other agents answers
        in the message that steps the env, with the observation its own command wrote."""
        for cmd, acted in batch:
            if acted is not None:
                for key, array in self.slots.slot(cmd.buf, cmd.row, cmd.env_id).items():
                    array[...] = acted[key]
        replies, obs, final = [], [], []
        for cmd, reply in self.hosted.run([cmd for cmd, _ in batch], self.slots):
            replies.append(reply)
            if reply.kind == "error":
                continue
            if cmd.kind in ("reset", "step", "lost_step"):
                obs.append(self.slots.slot(cmd.buf, cmd.row + (cmd.kind != "reset"), cmd.env_id))
            if _wrote_final(cmd, reply.value):
                final.append(self.slots.final_slot(cmd.env_id))
        return HostReply(replies, _stack(obs), _stack(final))

    def close(self) -> None:
        self.hosted.close()


class RayBackend(HostedBackend):
    """N env replicas spread over Ray actors (SPREAD over the nodes), stepped by env id."""

    def __init__(self, args: BackendArgs) -> None:
        super().__init__(args)
        self.ray = import_ray()
        self._connected = False  # this backend called ray.init, so it calls ray.shutdown
        self._actors: list[Any] = []
        self._nodes: list[tuple[str, str]] = []  # (node id, address) of each actor
        self._incarnation: list[int] = []  # replies of an actor given up for lost are ignored
        self._unsynced: set[int] = set()  # envs whose actor does not hold the observation they stand at
        self._in_flight: set[asyncio.Task] = set()
        self._actor_class: Any = None
        self._actor_cpus = 1.0
        self._ray_watchdog: MarkWatchdog | None = None  # while this backend's local Ray instance runs

    @property
    def actors(self) -> tuple[Any, ...]:
        """The actor handles, by index (None while one is being created again)."""
        return tuple(self._actors)

    @property
    def placement(self) -> str:
        """Where the envs run, for the run's config.json."""
        nodes = len({node_id for node_id, _ in self._nodes})
        return f"on {self.num_hosts} Ray actors ({nodes} node{'s' if nodes != 1 else ''})"

    async def start(self) -> None:
        """Connect to Ray (or start it), create the actors and wait until every replica is built."""
        self._connect()
        cpus = float(self.ray.cluster_resources().get("CPU", 0.0))
        a = self.args
        if a.ray_actors is not None:
            actors = a.ray_actors
        elif a.envs_per_actor is not None:
            actors = -(-a.num_envs // a.envs_per_actor)
        else:
            actors = max(1, int(cpus))
        self._split(min(actors, a.num_envs))
        # One CPU per actor where the cluster has them; shares of them otherwise, so that asking for
        # more actors than CPUs (many small env groups) never leaves actors waiting to be placed.
        self._actor_cpus = min(1.0, math.floor(cpus / self.num_hosts * 1e4) / 1e4)
        self._actors = [None] * self.num_hosts
        self._nodes = [("", "")] * self.num_hosts
        self._incarnation = [0] * self.num_hosts
        self._actor_class = self.ray.remote(ReplicaHost)
        await super().start()

    def _connect(self) -> None:
        ray, address = self.ray, self.args.ray_address
        if ray.is_initialized():  # this process already joined a cluster (or started one): use it
            return
        if address is not None:
            _check_answers(address)
        # What a local instance starts (its GCS, raylet, agents, workers) is marked, and killed by the
        # watchdog if this process dies without stopping it: its agents outlive a SIGKILL here.
        self._ray_watchdog = MarkWatchdog() if address is None else None
        try:
            self._init(ray, address)
        except BaseException:
            self._close_ray_watchdog()
            raise
        self._connected = True

    def _init(self, ray: ModuleType, address: str | None) -> None:
        from htsrl_aio.ipc.children import stop_signals_blocked  # imports torch, which actors need not

        on_sigterm = signal.getsignal(signal.SIGTERM)
        marking = self._ray_watchdog.marking() if self._ray_watchdog is not None else contextlib.nullcontext()
        try:
            # Without an address, ray.init starts a local instance sized to this machine (or joins
            # $RAY_ADDRESS); either way ray.shutdown undoes exactly what it did, and nothing more. The
            # processes it starts keep the stop signals blocked for good, so a signal to the whole
            # process group (`timeout`, Slurm, a closed terminal) stops this run at the swap instead of
            # killing its Ray instance under it.
            local = {"include_dashboard": False} if address is None else {}
            with _one_try_at_a_cluster(address), marking, stop_signals_blocked():
                ray.init(address=address, logging_level=logging.WARNING, **local)
        except ConnectionError as exc:
            if address is not None:
                raise ConfigError(f"--ray-address {address}: no Ray cluster answered there ({exc}); "
                                  f"{_ADDRESS_HINT}") from None
            raise env_error(f"could not start a local Ray instance: {exc}", traceback.format_exc()) from None
        except (RuntimeError, ValueError) as exc:
            where = "start a local Ray instance" if address is None else f"connect to Ray at {address!r}"
            raise env_error(f"could not {where}: {exc}", traceback.format_exc()) from None
        finally:
            # ray.init replaces the SIGTERM handler with sys.exit, which would skip the run's cleanup
            # (checkpoint, actors, this Ray instance): the process keeps the one it had.
            if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)

    def _close_ray_watchdog(self) -> None:
        """Kill what is left of the local Ray instance (its agents outlive its raylet when the raylet is
        killed, not stopped), and end the watchdog."""
        if self._ray_watchdog is not None:
            self._ray_watchdog.close()
            self._ray_watchdog = None

    def _where(self, index: int) -> str:
        address = self._nodes[index][1]
        node = f" on node {address}" if address else ""
        return f"Ray actor {index} ({self._envs_of(index)} of {self.args.factory.name!r}){node}"

    async def _launch(self, index: int) -> None:
        a = self.args
        old = self._actors[index]
        if old is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(old, no_restart=True)
        self._incarnation[index] += 1
        self._unsynced.update(self._slices[index])
        rollout = a.rollout_len
        actor = self._actor_class.options(num_cpus=self._actor_cpus, scheduling_strategy="SPREAD").remote(
            a.factory, a.spec, self._slices[index], a.run_seed, rollout, a.restart_on_error,
            self._lineage(index))
        self._actors[index] = actor
        timeout = None if a.env_timeout is None else max(a.env_timeout, START_TIMEOUT_S)
        try:
            node, failure = await self._answer(actor.start.remote(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise env_error(f"{self._where(index)} did not start within {timeout:g} s: no node may have the "
                            "resources it asks for, or its envs take that long to build (--env-timeout 0 "
                            "waits for ever).", "") from None
        except self.ray.exceptions.RayError as exc:
            why = _first_line(exc)
            if "No module named" in why:
                why += " (every node needs the packages that define the env: see docs/cluster.md)"
            raise env_error(f"{self._where(index)} could not start: {why}", str(exc)) from None
        self._nodes[index] = node
        if failure is not None:
            raise env_error(f"{self._where(index)} could not create its envs: {failure[0]}", failure[1])

    async def _answer(self, ref: Any, timeout: float | None) -> Any:
        """The value of a remote call, awaited without blocking the loop, within `timeout` seconds."""
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)

    def _deliver(self, index: int, commands: list[Command]) -> None:
        actor = self._actors[index]
        if actor is None:  # closed meanwhile: the run is stopping
            return
        batch = [(cmd, self._acted_on(cmd)) for cmd in commands]
        task = asyncio.ensure_future(self._exchange(index, actor.run.remote(batch)))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _acted_on(self, cmd: Command) -> ObsSlot | None:
        """The observation a step acts on, when the actor cannot know it (after its restart or a loaded
        checkpoint); None otherwise."""
        env_id = cmd.env_id
        if cmd.kind == "set_state":
            self._unsynced.add(env_id)
        elif cmd.kind == "reset":
            self._unsynced.discard(env_id)
        elif cmd.kind in ("step", "lost_step") and env_id in self._unsynced:
            self._unsynced.discard(env_id)
            here = self.args.buffers.slot(cmd.buf, cmd.row, env_id)
            return {key: view.copy() for key, view in here.items()}
        return None

    def _kill(self, index: int) -> None:
        with contextlib.suppress(Exception):  # a stuck actor is killed: nothing is left running
            self.ray.kill(self._actors[index], no_restart=True)
        # Lost now, not when Ray reports the kill (an unreachable node may take long to be declared dead);
        # the call in flight then fails as an answer that no longer counts (`_current`).
        self._host_died(index, self._where(index), "killed")

    async def _exchange(self, index: int, sent: Any) -> None:
        incarnation = self._incarnation[index]
        try:
            answer = await self._answer(sent, None)
        except self.ray.exceptions.RayTaskError as exc:  # a bug in the actor itself, not the env's
            self._fail(env_error(f"{self._where(index)} failed: {_first_line(exc)}", str(exc)))
            return
        except self.ray.exceptions.RayError as exc:  # the actor, or its node, died
            if self._current(index, incarnation):
                self._host_died(index, self._where(index), _first_line(exc), str(exc))
            return
        if self._current(index, incarnation):
            self._receive(answer)

    def _current(self, index: int, incarnation: int) -> bool:
        """Whether an answer of actor `index` as it was then still counts (it was not given up)."""
        return self._failure is None and incarnation == self._incarnation[index] and index not in self._held


    def _receive(self, answer: HostReply) -> None:
        buffers, name = self.args.buffers, self.args.factory.name
        obs_row = final_row = 0
        for reply in answer.replies:
            env_id = reply.env_id
            assert env_id is not None
            if reply.kind == "error":
                self._fail(env_error(f"env {env_id} of {name!r} failed: {reply.message}", reply.details))
                return
            cmd = self._commands[env_id]
            if cmd.kind in ("reset", "step", "lost_step"):
                into = buffers.slot(cmd.buf, cmd.row + (cmd.kind != "reset"), env_id)
                for key, view in into.items():
                    view[...] = answer.obs[key][obs_row]
                obs_row += 1
            if _wrote_final(cmd, reply.value):
                for key, view in buffers.final_slot(env_id).items():
                    view[...] = answer.final[key][final_row]
                final_row += 1
            self._resolve(env_id, reply.value)
            if self._failure is not None:
                return

    async def aclose(self) -> None:
        """Close every actor's envs (briefly), kill every actor, and stop Ray if this run started it."""
        await self._stop_hosting()
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        actors = [actor for actor in self._actors if actor is not None]
        self._actors = [None] * self.num_hosts
        if actors:
            closing = [asyncio.wrap_future(actor.close.remote().future()) for actor in actors]
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), CLOSE_TIMEOUT_S)
            for actor in actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)
        if self._connected:
            self._connected = False
            self.ray.shutdown()
            self._close_ray_watchdog()


_ADDRESS_HINT = ("start the cluster first (`ray start --head` prints its address) or give the address "
                 "`ray status` shows on the head node (--ray-address auto on a node of the cluster).")


@contextlib.contextmanager
def _one_try_at_a_cluster(address: str | None) -> Iterator[None]:
    """While joining the cluster at `address`, Ray tries it once (about 40 s) unless the user set how
    many times; starting a local instance is left as Ray does it."""
    if address is None or GCS_TRIES_VARIABLE in os.environ:
        yield
        return
    os.environ[GCS_TRIES_VARIABLE] = "1"
    try:
        yield
    finally:
        os.environ.pop(GCS_TRIES_VARIABLE, None)


def _check_answers(address: str) -> None:
    """A ConfigError unless something accepts a connection at `address` (host:port or ray://host:port)
    within CONNECT_TIMEOUT_S; "auto" and other forms are Ray's to resolve."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there within "
                          f"{CONNECT_TIMEOUT_S:g} s ({why.lower()}); {_ADDRESS_HINT}") from None


def _first_line(exc: BaseException) -> str:
    """One line for a Ray error: the exception raised inside the actor when it carries a traceback
    (an env that cannot be imported on the node, say), else its own first line."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line)]
    if raised:
        return raised[-1]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
