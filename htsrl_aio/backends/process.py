"""ProcessBackend: replicas in worker processes, reached over pipes watched by the event loop.

Each worker is a `WatchedChild`: its pipe and exit are loop callbacks, so waiting for envs costs
nothing and never spins. Commands and replies carry the env id; a reply resolves that env's future.
A worker's commands of one loop iteration travel as one message, and their replies as one message back.

Everything else (futures by env id, `--env-timeout`, a dead worker stopping the run or spawned again
with its envs under `--on-env-error restart`) is `HostedBackend`'s: a worker is a host. Only a worker
that has not built its envs yet is this module's: one that exits, or does not build them within
--env-timeout (counted from when it starts building, not from its spawn, which a loaded machine can
stretch), fails the start (or the restart) in one sentence whatever --on-env-error says: a new
worker would build the same envs the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

from htsrl_aio.backends.hosted import HostedBackend
from htsrl_aio.backends.protocol import BackendArgs
from htsrl_aio.backends.replica import env_error
from htsrl_aio.backends.worker import Command, Reply, WorkerArgs, worker_main
from htsrl_aio.errors import EnvError
from htsrl_aio.ipc.children import WatchedChild, close_children


class ProcessBackend(HostedBackend):
    """N env replicas spread over W worker processes, stepped by env id."""

    def __init__(self, args: BackendArgs) -> None:
        super().__init__(args)
        self._split(min(args.workers, args.num_envs))
        self.num_workers = self.num_hosts
        self._workers: list[WatchedChild | None] = [None] * self.num_workers
        self._ready: list[asyncio.Future] = []

    def _launch(self, index: int) -> asyncio.Future:
        assert self._loop is not None
        a = self.args
        dead = self._workers[index]
        if dead is not None:
            dead.conn.close()
        storages = tuple({k: s.spec for k, s in storage.items()} for storage in a.buffers.storages)
        worker_args = WorkerArgs(a.factory, a.spec, self._slices[index], storages,
                                 {k: s.spec for k, s in a.buffers.final.items()}, a.run_seed,
                                 restart_on_error=a.restart_on_error, lineage=self._lineage(index))
        where = f"env worker {index} ({self._envs_of(index)})"
        ready = self._loop.create_future()
        self._ready.append(ready)
        self._workers[index] = WatchedChild(f"htsrl-env-worker-{index}", worker_main, (worker_args,),
                                            functools.partial(self._dispatch, index, where, ready),
                                            functools.partial(self._on_exit, index, where, ready))
        return ready

    def _deliver(self, index: int, commands: list[Command]) -> None:
        worker = self._workers[index]
        if worker is None:  # closed meanwhile: the run is stopping
            return
        # If it died just now, its exit callback re-sends them (restart) or fails the run.
        with contextlib.suppress(OSError):
            worker.send(commands)

    def _kill(self, index: int) -> None:
        worker = self._workers[index]
        if worker is not None:
            worker.process.kill()  # its death (a loop callback) is a lost host

    def _dispatch(self, index: int, where: str, ready: asyncio.Future, replies: list[Reply]) -> None:
        for reply in replies:
            if reply.kind == "building":
                self._bound_building(index, where, ready)
                continue
            if reply.kind == "ready":
                if not ready.done():
                    ready.set_result(None)
                continue
            env_id = reply.env_id
            if reply.kind == "error":
                who = f"env {env_id}" if env_id is not None else where
                self._fail(env_error(f"{who} of {self.args.factory.name!r} failed: {reply.message}",
                                     reply.details))
                return
            assert env_id is not None
            self._resolve(env_id, reply.value)

    def _bound_building(self, index: int, where: str, ready: asyncio.Future) -> None:
        timeout = self.args.env_timeout
        if timeout and not ready.done():
            assert self._loop is not None
            timer = self._loop.call_later(timeout, self._building_timed_out, index, where, timeout)
            ready.add_done_callback(lambda _: timer.cancel())

    def _building_timed_out(self, index: int, where: str, timeout: float) -> None:
        self._fail(env_error(f"{where} of {self.args.factory.name!r} did not build its envs within "
                             f"--env-timeout {timeout:g} s, so it was killed; make the env's constructor "
                             "return sooner or raise --env-timeout.", ""))
        self._kill(index)

    def _on_exit(self, index: int, where: str, ready: asyncio.Future, exitcode: int | None) -> None:
        if ready.done():  # it had started (or its start failed, and the run with it)
            self._host_died(index, where, f"exit code {exitcode}")
            return
        self._fail(env_error(f"{where} of {self.args.factory.name!r} exited with code {exitcode} before its "
                             "envs were built, without raising an exception; make creating the env work in a "
                             "fresh process (`htsrl-aio check-env` runs it in one).", ""))

    def _fail(self, error: EnvError) -> None:
        super()._fail(error)
        for future in self._ready:
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        """Stop every worker: ask politely, then terminate, then kill."""
        await self._stop_hosting()
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * self.num_workers
        await close_children(workers)
