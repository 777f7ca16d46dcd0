"""HostedBackend: what every backend whose replicas live in groups on hosts shares, whatever the transport.

A host (a worker process, a Ray actor) runs the `Replica`s of one slice of the envs. The schedule has
at most one command in flight per env: its future waits here by env id until the host's reply
resolves it. The commands for one host issued during one loop iteration (the envs whose actions one
inference batch produced) go to it together (`_deliver`), so one message serves many env steps.

When a host is lost (it died, or stopped answering), either the run stops in one sentence naming its
envs, or (`--on-env-error restart`) the host is started again: the commands it lost wait for the new
one, its envs start over with a fresh seed lineage (`Lineage.RESPAWNED`), the step each env was taking becomes
a truncation (`Replica.lost_step`), and every re-created env is charged to the `RestartBudget`.

--env-timeout: a watchdog on the loop looks at the commands in flight; a host holding one past the
limit (counted from when the command left for it) is killed (`_kill`), and its death is a lost host
like any other, with the timeout as the reason.

Start-up is the subclass's: `_launch` resolves once the host has built its envs, and fails (one
sentence, in both modes) when the host dies first or does not build them in time (--env-timeout); a
restart replaces a host that ran, not one that cannot start.

Subclasses launch, reach and kill hosts (`_launch`, `_deliver`, `_kill`) and report a death with
`_host_died`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import numpy as np

from htsrl_aio.backends.protocol import BackendArgs, as_wire_action, describe_ticket, obs_slot_of
from htsrl_aio.backends.replica import Lineage, ReplicaState, RestartBudget, env_error
from htsrl_aio.backends.worker import Command
from htsrl_aio.errors import EnvError
from htsrl_aio.steps import StepResult, StepTicket


class HostedBackend:
    """N env replicas spread over `num_hosts` hosts in contiguous slices, stepped by env id."""

    def __init__(self, args: BackendArgs) -> None:
        self.args = args
        self.budget = RestartBudget(args.num_envs, args.factory.name, args.on_restart)
        self.num_hosts = 0
        self._slices: list[tuple[int, ...]] = []
        self._host_of: list[int] = []
        self._respawns: list[int] = []
        self._pending: dict[int, asyncio.Future] = {}
        self._commands: dict[int, Command] = {}  # the command each pending future waits for
        self._outbox: dict[int, list[Command]] = {}  # host index -> commands delivered at the next flush
        self._held: dict[int, list[int]] = {}  # host index -> envs whose commands wait for its restart
        # Envs of a lost host -> why it was re-created: their next step is a lost step, which reports it.
        self._stale: dict[int, tuple[str, str]] = {}
        # Multi-agent rows whose agent is out of its env's episode after their last step (StepResult.waits):
        # the lost step of such a row, on a host that never saw it, is no transition either.
        self._waiting: set[int] = set()
        self._respawning: set[asyncio.Task] = set()
        self._failure: EnvError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # --env-timeout: when each env's command in flight left for its host, the ticket it was for,
        # and why a host was killed (the reason its death gets).
        self._sent_at: dict[int, float] = {}
        self._tickets: dict[int, StepTicket | None] = {}
        self._killed_because: dict[int, str] = {}
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def restarts(self) -> int:
        return self.budget.restarts

    def _split(self, num_hosts: int) -> None:
        """Give each of at most `num_hosts` hosts a contiguous slice of the envs (call once, before
        start). The rows of one multi-agent env stay on one host, which steps them together."""
        per_env = self.args.spec.rows_per_env
        envs = self.args.num_envs // per_env
        self.num_hosts = num_hosts = min(num_hosts, envs)
        self._slices = [tuple(int(row) for env in ids for row in range(env * per_env, (env + 1) * per_env))
                        for ids in np.array_split(np.arange(envs), num_hosts)]
        self._host_of = [h for h, ids in enumerate(self._slices) for _ in ids]
        self._respawns = [0] * num_hosts

    def _launch(self, index: int) -> Awaitable[None]:
        """Start host `index` with its slice of envs; resolves once every replica is built."""
        raise NotImplementedError

    def _deliver(self, index: int, commands: list[Command]) -> None:
        """Carry `commands` to host `index`; its replies go to `_resolve` (or `_fail`, `_host_died`)."""
        raise NotImplementedError

    def _kill(self, index: int) -> None:
        """Kill host `index` (it holds a command past --env-timeout); its death must reach `_host_died`."""
        raise NotImplementedError

    def _lineage(self, index: int) -> tuple[int, ...]:
        return (Lineage.RESPAWNED, self._respawns[index]) if self._respawns[index] else ()

    def _envs_of(self, index: int) -> str:
        ids = self._slices[index]
        return f"env {ids[0]}" if len(ids) == 1 else f"envs {ids[0]}-{ids[-1]}"

    async def start(self) -> None:
        """Start every host and wait until every replica is built."""
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(self._launch(index) for index in range(self.num_hosts)))
        if self.args.env_timeout:
            self._watch()

    def reset(self, ticket: StepTicket) -> asyncio.Future[None]:
        buf, row = obs_slot_of(ticket)
        return self._send(Command("reset", ticket.env, buf, row), ticket)

    def step(self, ticket: StepTicket, action: Any) -> asyncio.Future[StepResult]:
        buf, row = obs_slot_of(ticket)
        return self._send(Command("step", ticket.env, buf, row, as_wire_action(action)), ticket)

    def get_state(self, env_id: int) -> asyncio.Future[ReplicaState]:
        return self._send(Command("get_state", env_id))

    def set_state(self, env_id: int, state: ReplicaState) -> asyncio.Future[str | None]:
        return self._send(Command("set_state", env_id, state=state))

    def _send(self, cmd: Command, ticket: StepTicket | None = None) -> asyncio.Future:
        assert self._loop is not None, f"{type(self).__name__}.start() was not awaited"
        future = self._loop.create_future()
        if self._failure is not None:
            future.set_exception(self._failure)
            return future
        env_id = cmd.env_id
        assert env_id not in self._pending, f"env {env_id} already has a command in flight"
        self._pending[env_id] = future
        self._commands[env_id] = cmd
        self._tickets[env_id] = ticket
        index = self._host_of[env_id]
        if index in self._held:
            self._held[index].append(env_id)
        else:
            self._forward(index, env_id)
        return future

    def _forward(self, index: int, env_id: int) -> None:
        assert self._loop is not None
        cmd = self._commands[env_id]
        if env_id in self._stale and cmd.kind == "reset":  # a new episode anyway: no step is lost
            del self._stale[env_id]
        elif env_id in self._stale and cmd.kind == "step":
            cmd = self._commands[env_id] = cmd._replace(kind="lost_step", absent=env_id in self._waiting)
        if self.args.env_timeout:
            self._sent_at[env_id] = self._loop.time()
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.setdefault(index, []).append(cmd)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for index, commands in outbox.items():
            # A host lost meanwhile: these envs are in `_held` and go to the new one.
            if self._failure is None and index not in self._held:
                self._deliver(index, commands)

    def _resolve(self, env_id: int, value: Any) -> None:
        """A host's answer to env `env_id`'s command: charge a restart it reports, resolve its future."""
        kind = self._commands[env_id].kind
        failure = value.restarted if isinstance(value, StepResult) else value if kind == "reset" else None
        if failure is not None:
            error = self.budget.charge_step(env_id, failure)
            if error is not None:
                self._fail(error)
                return
        if kind == "lost_step":  # charged when its host was lost; the schedule counts it at this step
            value = value._replace(restarted=self._stale.pop(env_id))
        if isinstance(value, StepResult) and value.waits:
            self._waiting.add(env_id)
        else:
            self._waiting.discard(env_id)
        self._commands.pop(env_id, None)
        self._sent_at.pop(env_id, None)
        future = self._pending.pop(env_id, None)
        if future is not None and not future.done():  # a cancelled collector has cancelled its future
            future.set_result(None if kind == "reset" else value)

    def _watch(self) -> None:
        """Kill the host of every command in flight past --env-timeout; look again in a while."""
        assert self._loop is not None and self.args.env_timeout
        timeout = self.args.env_timeout
        now = self._loop.time()
        for env_id, sent in list(self._sent_at.items()):
            if now - sent > timeout and env_id in self._sent_at:
                self._time_out(env_id, timeout)
        if self._failure is None:
            self._watchdog = self._loop.call_later(min(timeout / 4, 1.0), self._watch)

    def _time_out(self, env_id: int, timeout: float) -> None:
        index = self._host_of[env_id]
        for other in self._slices[index]:  # its host dies: none of its commands can be answered
            self._sent_at.pop(other, None)
        cmd, ticket = self._commands.get(env_id), self._tickets.get(env_id)
        what = "command" if cmd is None else cmd.kind.replace("lost_step", "step")
        at = "" if ticket is None else f" {describe_ticket(ticket)}"
        self._killed_because[index] = (f"env {env_id} of {self.args.factory.name!r} did not answer its "
                                       f"{what}{at} within --env-timeout {timeout:g} s")
        self._kill(index)

    def _host_died(self, index: int, where: str, cause: str, details: str = "") -> None:
        """Host `index` (described as `where`) is gone, because of `cause` or a timeout it was killed for."""
        timed_out = self._killed_because.pop(index, None)
        if timed_out:
            self._host_lost(index, f"{timed_out}, so {where} was killed; make the env answer sooner, raise "
                                   "--env-timeout, or pass --on-env-error restart to replace it.",
                            f"{timed_out}; {where} was killed; started again", details)
        else:
            self._host_lost(index, f"{where} died unexpectedly ({cause}); the run cannot continue without "
                                   "its envs.", f"{where} died ({cause}); started again", details)

    def _host_lost(self, index: int, stopped: str, restarted: str, details: str) -> None:
        """Host `index` is gone with its envs: stop the run with the sentence `stopped`, or (restarts on)
        charge its envs with the message `restarted` and start it again."""
        if not self.args.restart_on_error or self._failure is not None:
            self._fail(env_error(stopped, details))
            return
        env_ids = self._slices[index]
        error = self.budget.charge(env_ids, restarted, details)
        if error is not None:
            self._fail(error)
            return
        # Commands in flight are lost with the host: they wait for the new one, as do new ones.
        self._held[index] = [e for e in env_ids if e in self._pending]
        self._stale.update(dict.fromkeys(env_ids, (restarted, details)))
        for env_id in env_ids:
            self._sent_at.pop(env_id, None)
        self._respawns[index] += 1
        task = asyncio.ensure_future(self._relaunch(index))
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)

    async def _relaunch(self, index: int) -> None:
        try:
            await self._launch(index)
        except EnvError as error:
            self._fail(error)
            return
        for env_id in self._held.pop(index):
            if env_id in self._pending:
                self._forward(index, env_id)

    def _fail(self, error: EnvError) -> None:
        if self._failure is not None:
            return
        self._failure = error
        self._sent_at.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _stop_hosting(self) -> None:
        """Stop the watchdog and any host being started again (the first step of every `aclose`)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._respawning):
            task.cancel()
        await asyncio.gather(*self._respawning, return_exceptions=True)
