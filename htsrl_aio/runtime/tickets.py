"""Step tickets: the (rollout, env, step) name of one transition and of the randomness behind it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from htsrl_aio.seeding import Stream, generator


class StepTicket(NamedTuple):
    """Names the storage slot a transition goes to and keys the stream that samples its action."""

    rollout: int
    env: int
    step: int


class TicketSampler:
    """Samples a categorical action per ticket from a uniform owned by that ticket alone.

    The uniforms of rollout j are one (num_envs, rollout) draw from a stream keyed by (seed, j), so the
    value behind ticket (j, i, t) is fixed before any step runs: no draw depends on arrival order or on
    which other rows shared the batch.
    """

    def __init__(self, run_seed: int, num_envs: int, rollout_len: int) -> None:
        self.run_seed = run_seed
        self.shape = (num_envs, rollout_len)
        self._uniforms: dict[int, np.ndarray] = {}

    def uniform(self, ticket: StepTicket) -> float:
        table = self._uniforms.get(ticket.rollout)
        if table is None:
            # At most two rollouts are in flight (one collecting, one finishing); drop older tables.
            for old in [j for j in self._uniforms if j < ticket.rollout - 1]:
                del self._uniforms[old]
            table = generator(self.run_seed, Stream.ACTION, ticket.rollout).random(self.shape)
            self._uniforms[ticket.rollout] = table
        return float(table[ticket.env, ticket.step])

    def sample(self, tickets: list[StepTicket], logits: np.ndarray) -> np.ndarray:
        """Inverse-CDF sampling, row by row, in float64 from each row's own logits."""
        u = np.array([self.uniform(t) for t in tickets], dtype=np.float64)
        z = logits.astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        cdf = np.cumsum(z, axis=1)
        actions = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
        return np.minimum(actions, logits.shape[1] - 1)
