"""ProcessLearner: the learner in its own process, so its Python work never waits for the GIL.

The parameters live in torch shared memory. The learner process updates `model` in place and
`behaviour` is written by the parent at a swap; both only while the other side is idle (the swap
barrier guarantees it), so no lock is needed. Rollouts are read straight from the shared storages;
only the storage index crosses the pipe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
from multiprocessing.connection import Connection
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from htsrl_aio.config import TrainConfig
from htsrl_aio.distributions import ActionDistribution
from htsrl_aio.errors import HtsrlError
from htsrl_aio.ipc.children import WatchedChild, close_children
from htsrl_aio.ipc.shm import SharedArray, SharedArraySpec
from htsrl_aio.runtime.learner import Learner, wait_settled
from htsrl_aio.runtime.storage import RolloutStorage

StorageSpecs = list[dict[str, SharedArraySpec]]


class LearnerCommand(NamedTuple):
    """Parent -> learner process: learn the rollout in storage `storage`, or send the optimizer state."""

    kind: Literal["update", "optimizer"]
    storage: int = -1
    behaviour_version: int = 0  # PPO's trust region depends on the lag, so the child must know it


class LearnerReply(NamedTuple):
    """Learner process -> parent: "ready", "done" (value: the update's stats), "optimizer", "error"."""

    kind: Literal["ready", "done", "optimizer", "error"]
    value: Any = None
    message: str = ""
    details: str = ""


class LearnerError(HtsrlError):
    """The learner failed (an exception in the update, or its process died)."""


class ProcessLearner:
    def __init__(self, config: TrainConfig, model: nn.Module, behaviour: nn.Module,
                 distribution: ActionDistribution, storage_specs: StorageSpecs) -> None:
        # The learner needs no env, and a factory may be a closure that cannot be pickled: send its name.
        self.config = dataclasses.replace(config, env=config.to_json_dict()["env"])
        self.model = model.share_memory()
        self.behaviour = behaviour.share_memory()
        self.distribution = distribution
        self._storage_specs = storage_specs
        self.version = 0  # updates the child has completed, counted as it reports them
        self.behaviour_version = 0
        self._optimizer_state: dict | None = None
        self._child: WatchedChild | None = None
        self._reply: asyncio.Future | None = None
        self._failure: LearnerError | None = None

    def restore(self, version: int, behaviour_version: int, optimizer_state: dict) -> None:
        """Continue from a checkpoint (call before start); the parameters are already in `model`."""
        self.version, self.behaviour_version = version, behaviour_version
        self._optimizer_state = optimizer_state

    async def start(self) -> None:
        self._reply = asyncio.get_running_loop().create_future()
        self._child = WatchedChild("htsrl-learner", learner_main,
                                   (self.config, self.model, self.behaviour, self.distribution,
                                    self._storage_specs,
                                    self.version, self._optimizer_state),
                                   self._on_message, self._on_exit)
        self._optimizer_state = None
        await self._reply

    @torch.no_grad()
    def load_behaviour(self, source: nn.Module, version: int) -> None:
        for dst, src in zip(self.behaviour.state_dict().values(), source.state_dict().values()):
            dst.copy_(src)
        self.behaviour_version = version

    async def update(self, storage: RolloutStorage) -> dict[str, float]:
        return await self._call(LearnerCommand("update", storage.index, self.behaviour_version))

    async def optimizer_state(self) -> dict:
        return await self._call(LearnerCommand("optimizer"))

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


def learner_main(conn: Connection, config: TrainConfig, model: nn.Module, behaviour: nn.Module,
                 distribution: ActionDistribution, storage_specs: StorageSpecs, version: int,
                 optimizer_state: dict | None) -> None:
    torch.set_num_threads(config.torch_threads)
    torch.use_deterministic_algorithms(config.deterministic)
    shared = [{name: SharedArray.attach(spec) for name, spec in specs.items()} for specs in storage_specs]
    storages = [RolloutStorage(i, {name: a.array for name, a in arrays.items()})
                for i, arrays in enumerate(shared)]
    learner = Learner(config, model, behaviour, distribution)
    if optimizer_state is not None:
        learner.restore(version, optimizer_state)
    try:
        conn.send(LearnerReply("ready"))
        while True:
            message = conn.recv()
            if message[0] == "close":
                return
            try:
                if message.kind == "optimizer":
                    conn.send(LearnerReply("optimizer", learner.optimizer.state_dict()))
                    continue
                learner.behaviour_version = message.behaviour_version
                conn.send(LearnerReply("done", learner.update(storages[message.storage])))
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
