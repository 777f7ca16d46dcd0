"""ProcessLearner: the learner in its own process, so its Python work never waits for the GIL.

The current parameters live in torch shared memory: the learner process updates `model` in place, and
the parent reads it at a swap to publish it, each only while the other side is idle (the swap barrier
guarantees it), so no lock is needed. Everything else the learner owns (the kept parameters, the
optimizer) stays in its process and comes back only in `save()`. Rollouts are read straight from the
shared storages; only the storage index and the behaviour version cross the pipe.
"""

from __future__ import annotations

import asyncio
import copy
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any, Literal, NamedTuple

import torch
import torch.multiprocessing  # pickles tensors sent to a child as shared memory (the parameters)
from torch import nn

from htsrl_aio.config import LearnerSettings
from htsrl_aio.distributions import ActionDistribution
from htsrl_aio.errors import HtsrlError
from htsrl_aio.ipc.children import WatchedChild, close_children
from htsrl_aio.ipc.shm import SharedArray
from htsrl_aio.runtime.learner import Learner, learn, use_deterministic_algorithms, wait_settled
from htsrl_aio.runtime.memory import StorageSpecs
from htsrl_aio.runtime.storage import RolloutStorage


class LearnerCommand(NamedTuple):
    """Parent -> learner process: learn the rollout in storage `storage`, collected by the parameters of
    `behaviour_version`, or send the learner's state for a checkpoint."""

    kind: Literal["update", "save"]
    storage: int = -1
    behaviour_version: int = 0


class LearnerReply(NamedTuple):
    """Learner process -> parent: "ready", "done" (value: the update's stats), "saved", "error"."""

    kind: Literal["ready", "done", "saved", "error"]
    value: Any = None
    message: str = ""
    details: str = ""


class LearnerError(HtsrlError):
    """The learner failed (an exception in the update, or its process died)."""


class ProcessLearner:
    def __init__(self, settings: LearnerSettings, model: nn.Module, distribution: ActionDistribution,
                 storage_specs: StorageSpecs) -> None:
        self.settings = settings
        self.model = model.share_memory()
        self.distribution = distribution
        self._storage_specs = storage_specs
        self.version = 0  # updates the child has completed, counted as it reports them
        self._restored: Mapping[str, Any] | None = None
        self._child: WatchedChild | None = None
        self._reply: asyncio.Future | None = None
        self._failure: LearnerError | None = None

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's learner part (call before start); the child loads them."""
        self.version = state["update"]
        self._restored = state

    async def start(self) -> None:
        self._reply = asyncio.get_running_loop().create_future()
        self._child = WatchedChild("htsrl-learner", learner_main,
                                   (self.settings, self.model, self.distribution, self._storage_specs,
                                    self._restored),
                                   self._on_message, self._on_exit)
        self._restored = None
        await self._reply

    async def update(self, storage: RolloutStorage, behaviour_version: int) -> dict[str, float]:
        return await self._call(LearnerCommand("update", storage.index, behaviour_version))

    async def save(self) -> dict[str, Any]:
        return await self._call(LearnerCommand("save"))

    async def settle(self) -> None:
        """Wait until the child has finished what it was asked, even if the asker was cancelled."""
        await wait_settled(self._reply)

    async def _call(self, message: LearnerCommand) -> Any:
        if self._failure is not None:
            raise self._failure
        assert self._child is not None, "ProcessLearner.start() was not awaited"
        self._reply = asyncio.get_running_loop().create_future()
        self._child.send(message)
        # Shielded: a cancelled caller leaves the reply to be collected by settle().
        return await asyncio.shield(self._reply)

    def _on_message(self, reply: LearnerReply) -> None:
        if reply.kind == "error":
            error = LearnerError(reply.message)
            error.details = reply.details
            self._fail(error)
            return
        if reply.kind == "done":
            self.version += 1
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(reply.value)

    def _on_exit(self, exitcode: int | None) -> None:
        self._fail(LearnerError(f"the learner process died unexpectedly (exit code {exitcode})."))

    def _fail(self, error: LearnerError) -> None:
        if self._failure is None:
            self._failure = error
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)

    async def aclose(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            await close_children([child])


def learner_main(conn: Connection, settings: LearnerSettings, model: nn.Module,
                 distribution: ActionDistribution, storage_specs: StorageSpecs,
                 restored: Mapping[str, Any] | None) -> None:
    torch.set_num_threads(settings.torch_threads)
    use_deterministic_algorithms(settings.deterministic)
    shared = [{name: SharedArray.attach(spec) for name, spec in specs.items()} for specs in storage_specs]
    storages = [RolloutStorage(i, {name: a.array for name, a in arrays.items()})
                for i, arrays in enumerate(shared)]
    learner = Learner(settings, model, copy.deepcopy(model), distribution)
    if restored is not None:
        learner.restore(restored)
    try:
        conn.send(LearnerReply("ready"))
        while True:
            message = conn.recv()
            if message[0] == "close":
                return
            try:
                if message.kind == "save":
                    conn.send(LearnerReply("saved", learner.save()))
                    continue
                conn.send(LearnerReply("done", learn(learner, storages[message.storage],
                                                     message.behaviour_version)))
            except HtsrlError as exc:  # already one sentence for the user
                conn.send(LearnerReply("error", message=str(exc), details=traceback.format_exc()))
            except Exception as exc:
                conn.send(LearnerReply("error", message=f"the learner failed: {type(exc).__name__}: {exc}",
                                       details=traceback.format_exc()))
    except (EOFError, OSError):
        return  # the parent is gone
    finally:
        for arrays in shared:
            for array in arrays.values():
                array.close()
