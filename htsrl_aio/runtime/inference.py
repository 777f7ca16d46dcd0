"""Batched inference on the event loop: whatever observations are ready go through one forward pass.

Requests made in the same loop iteration join one batch: the first request schedules a flush with
`call_soon`, which runs after every collector that woke in this iteration has asked. In deterministic
mode every forward pass has the fixed shape (block, ...): requests are split into blocks and the rows
that are not requests are padding. CPU kernels pick their blocking by shape, so a row's logits could
otherwise change in the last bits with the batch size and flip a sampled action; the block is fixed by
the run's settings, not by `max_batch` or timing (see docs/determinism.md).
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from htsrl_aio.runtime.tickets import StepTicket, TicketSampler


class ActionResult(NamedTuple):
    action: int
    logprob: float
    value: float


class BatchedInference:
    def __init__(self, model: nn.Module, sampler: TicketSampler, max_batch: int,
                 obs_shape: tuple[int, ...], obs_dtype: np.dtype, block: int | None = 8,
                 device: torch.device | str = "cpu") -> None:
        """`block`: fixed rows per forward pass (deterministic); None runs each batch at its own size."""
        self.model = model.eval()
        self.sampler = sampler
        self.max_batch = max_batch
        self.block = block
        self.device = torch.device(device)
        self._batch = np.zeros((block or max_batch, *obs_shape), dtype=obs_dtype)
        self._queue: list[tuple[StepTicket, np.ndarray, asyncio.Future[ActionResult]]] = []
        self._flush_scheduled = False
        self.forward_passes = 0
        self.rows_served = 0

    def act(self, ticket: StepTicket, obs: np.ndarray) -> asyncio.Future[ActionResult]:
        """Ask for the action of `ticket` given its observation (read when the batch runs)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ActionResult] = loop.create_future()
        self._queue.append((ticket, obs, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self.max_batch):
            chunk = [req for req in queue[start:start + self.max_batch] if not req[2].done()]
            if not chunk:
                continue
            try:
                results = self.infer([t for t, _, _ in chunk], [obs for _, obs, _ in chunk])
            except Exception as exc:
                for _, _, future in chunk:
                    future.set_exception(exc)
                continue
            for (_, _, future), result in zip(chunk, results):
                if not future.done():
                    future.set_result(result)

    def infer(self, tickets: list[StepTicket], observations: list[np.ndarray]) -> list[ActionResult]:
        """Actions for `observations` (at most max_batch), each sampled from its ticket's stream."""
        n = len(observations)
        step = self.block or n
        parts_l, parts_v = [], []
        for start in range(0, n, step):
            rows = observations[start:start + step]
            for i, obs in enumerate(rows):
                self._batch[i] = obs
            part_l, part_v = self.forward(self._batch[:self.block or len(rows)])
            parts_l.append(part_l[:len(rows)])
            parts_v.append(part_v[:len(rows)])
            self.forward_passes += 1
        logits, values = np.concatenate(parts_l), np.concatenate(parts_v)
        actions = self.sampler.sample(tickets, logits)
        logprobs = _log_softmax(logits)[np.arange(n), actions]
        self.rows_served += n
        return [ActionResult(int(a), float(lp), float(v)) for a, lp, v in zip(actions, logprobs, values)]

    @torch.no_grad()
    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, values = self.model(torch.from_numpy(batch).to(self.device))
        return logits.float().cpu().numpy(), values.float().cpu().numpy()

    @torch.no_grad()
    def publish(self, source: nn.Module) -> None:
        """Copy `source`'s parameters into the inference network (called only at a swap)."""
        for dst, src in zip(self.model.state_dict().values(), source.state_dict().values()):
            dst.copy_(src)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
