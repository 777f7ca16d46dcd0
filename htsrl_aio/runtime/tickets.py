"""Step tickets: the (rollout, env, step) name of one transition and of the randomness behind it."""

from __future__ import annotations

from typing import Literal

import numpy as np

from htsrl_aio.seeding import Stream, generator
from htsrl_aio.steps import StepTicket


class TicketNoise:
    """The noise behind each ticket's action: `size` uniforms or standard normals owned by it alone.

    The noise of rollout j is one (num_envs, rollout, size) draw from a stream keyed by (seed, j), so
    the values behind ticket (j, i, t) are fixed before any step runs: no draw depends on arrival
    order or on which other rows shared the batch. The action distribution turns them into an action.
    """

    def __init__(self, run_seed: int, num_envs: int, rollout_len: int, size: int = 1,
                 kind: Literal["uniform", "normal"] = "uniform") -> None:
        self.run_seed = run_seed
        self.shape = (num_envs, rollout_len, size)
        self.kind = kind
        self._tables: dict[int, np.ndarray] = {}

    def of(self, ticket: StepTicket) -> np.ndarray:
        """The (size,) noise of `ticket`."""
        table = self._tables.get(ticket.rollout)
        if table is None:
            # At most two rollouts are in flight (one collecting, one finishing); drop older tables.
            for old in [j for j in self._tables if j < ticket.rollout - 1]:
                del self._tables[old]
            rng = generator(self.run_seed, Stream.ACTION, ticket.rollout)
            table = rng.random(self.shape) if self.kind == "uniform" else rng.standard_normal(self.shape)
            self._tables[ticket.rollout] = table
        return table[ticket.env, ticket.step]
