"""Batched inference on the event loop: whatever observations are ready go through one forward pass.

Requests made in the same loop iteration join one batch: the first request schedules a flush with
`call_soon`, which runs after every collector that woke in this iteration has asked. In deterministic
mode every forward pass, and the sampling and scoring of its actions, has the fixed shape (block, ...):
requests are split into blocks and the rows that are not requests are padding. CPU kernels pick their
blocking by shape, so a row's outputs could otherwise change in the last bits with the batch size and
flip a sampled action; the block is fixed by the run's settings, not by `max_batch` or timing (see
docs/determinism.md).

Two kinds of request share the batches: `act` (an action sampled from the ticket's noise, its
log-probability and the value) and `value` (only the value: the bootstrap target of an episode cut by
a time limit, computed by the parameters that collected it, i.e. the behaviour parameters).

A policy with memory carries each env's recurrent state: a request names the state it starts from
(a `MemorySlot` of the storage), the block holds those states in rows beside the observations, and the
result carries the next state. A state is reset where its observation begins an episode, by the flag
stored with it; the row a request lands in changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from htsrl_aio.distributions import ActionDistribution
from htsrl_aio.models.actor_critic import ActorCritic
from htsrl_aio.models.params import copy_params
from htsrl_aio.runtime.storage import MemorySlot
from htsrl_aio.runtime.tickets import TicketNoise
from htsrl_aio.steps import ObsSlot, StepTicket


class ActionResult(NamedTuple):
    action: np.ndarray  # the stored action row (shape () for Discrete)
    logprob: float
    value: float
    state: np.ndarray  # the next recurrent state ((0,) for a memoryless policy)


class _Request(NamedTuple):
    ticket: StepTicket | None  # None: a value request
    obs: ObsSlot
    memory: MemorySlot | None
    future: asyncio.Future[ActionResult]


class BatchedInference:
    def __init__(self, model: ActorCritic, distribution: ActionDistribution, noise: TicketNoise,
                 max_batch: int, obs_arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                 block: int | None = 8,
                 device: torch.device | str = "cpu") -> None:
        """`block`: fixed rows per forward pass (deterministic); None runs each batch at its own size."""
        self.model = model.eval()
        self.distribution = distribution
        self.noise = noise
        self.max_batch = max_batch
        self.block = block
        self.device = torch.device(device)
        rows = block or max_batch
        self._batch = {key: np.zeros((rows, *shape), dtype) for key, (shape, dtype) in obs_arrays.items()}
        self._noise = np.zeros((rows, noise.shape[-1]))
        self._state = np.zeros((rows, model.state_size), np.float32)
        self._start = np.zeros(rows, bool)
        self._queue: list[_Request] = []
        self._flush_scheduled = False
        self.forward_passes = 0
        self.rows_served = 0

    def act(self, ticket: StepTicket, obs: ObsSlot,
            memory: MemorySlot | None = None) -> asyncio.Future[ActionResult]:
        """Ask for the action of `ticket` given its observation and, with --memory, the state it starts
        from (both read when the batch runs)."""
        return self._request(ticket, obs, memory)

    def value(self, obs: ObsSlot, memory: MemorySlot | None = None) -> asyncio.Future[ActionResult]:
        """Ask for the value of an observation (the result's action is meaningless)."""
        return self._request(None, obs, memory)

    def _request(self, ticket: StepTicket | None, obs: ObsSlot,
                 memory: MemorySlot | None) -> asyncio.Future[ActionResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ActionResult] = loop.create_future()
        self._queue.append(_Request(ticket, obs, memory, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self.max_batch):
            chunk = [req for req in queue[start:start + self.max_batch] if not req.future.done()]
            if not chunk:
                continue
            try:
                results = self.infer([r.ticket for r in chunk], [r.obs for r in chunk],
                                     [r.memory for r in chunk])
            except Exception as exc:
                for request in chunk:
                    request.future.set_exception(exc)
                continue
            for request, result in zip(chunk, results):
                if not request.future.done():
                    request.future.set_result(result)

    @torch.no_grad()
    def infer(self, tickets: list[StepTicket | None], observations: list[ObsSlot],
              memories: list[MemorySlot | None] | None = None) -> list[ActionResult]:
        """Results for `observations` (at most max_batch); actions sampled from each ticket's noise."""
        n = len(observations)
        memories = memories or [None] * n
        step = self.block or n
        results: list[ActionResult] = []
        for start in range(0, n, step):
            rows = observations[start:start + step]
            # Sampling and scoring run on the whole block too: vectorised kernels treat the elements
            # of a tensor's tail differently, so a row's bits must not depend on how many rows follow.
            size = self.block or len(rows)
            for key, batch in self._batch.items():
                for i, obs in enumerate(rows):
                    batch[i] = obs[key]
            for i, ticket in enumerate(tickets[start:start + step]):
                self._noise[i] = 0.0 if ticket is None else self.noise.of(ticket)
            self._fill_memory(memories[start:start + step])
            params, values, states = self.forward({key: batch[:size] for key, batch in self._batch.items()},
                                                  self._state[:size], self._start[:size])
            noise = torch.from_numpy(self._noise[:size])
            actions = self.distribution.sample(params, noise)
            logprobs = self.distribution.log_prob(params, actions)
            actions_np, states_np = actions.numpy(), states.numpy()
            results.extend(ActionResult(actions_np[i], lp, v, states_np[i]) for i, (lp, v) in
                           enumerate(zip(logprobs[:len(rows)].tolist(), values[:len(rows)].tolist())))
            self.forward_passes += 1
        self.rows_served += n
        return results

    def _fill_memory(self, memories: list[MemorySlot | None]) -> None:
        """The block's state rows; rows without a state (padding, memoryless) start empty."""
        if not self._state.shape[1]:
            return
        self._state.fill(0.0)
        self._start.fill(True)
        for i, memory in enumerate(memories):
            if memory is not None:
                self._state[i] = memory.state
                self._start[i] = memory.start

    @torch.no_grad()
    def forward(self, batch: Mapping[str, np.ndarray], state: np.ndarray,
                start: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(distribution parameters, values, next states) on the CPU, in float32."""
        obs = {key: torch.from_numpy(a).to(self.device) for key, a in batch.items()}
        # A memoryless policy's step is its forward pass; its empty state passes through.
        params, values, states = self.model.step(obs, torch.from_numpy(state).to(self.device),
                                                 torch.from_numpy(start).to(self.device))
        return params.float().cpu(), values.float().cpu(), states.float().cpu()

    @torch.no_grad()
    def act_alone(self, obs: Mapping[str, np.ndarray], state: np.ndarray,
                  start: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution parameters, next states) of the actor alone, on the CPU (`Trainer.act`: acting
        needs no value, so no global state of a centralised critic)."""
        tensors = {key: torch.from_numpy(a).to(self.device) for key, a in obs.items()}
        params, states = self.model.act(tensors, torch.from_numpy(state).to(self.device),
                                        torch.from_numpy(start).to(self.device))
        return params.float().cpu(), states.float().cpu()

    def publish(self, source: nn.Module) -> None:
        """Copy `source`'s parameters and statistics into the inference network (only at a swap)."""
        copy_params(self.model, source)
