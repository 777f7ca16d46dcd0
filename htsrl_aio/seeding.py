"""Named random streams derived from the run seed.

Every stream is keyed by the run seed, a purpose and integer ids (env, rollout, update...), so a draw
never depends on which other draws happened before it or in which order: that is what lets timing,
worker count and batch make-up leave results unchanged.
"""

from __future__ import annotations

import enum

import numpy as np


class Stream(enum.IntEnum):
    """Purposes of derived streams; values are part of the seed, so never renumber them."""

    ENV_RESET = 1
    ACTION = 2
    INIT = 3
    MINIBATCH = 4
    HOST_ACT = 5  # Trainer.act for the host app: never shared with training
    EVAL_RESET = 6  # htsrl-aio eval: episode seeds
    EVAL_ACT = 7  # htsrl-aio eval: sampled actions


def derive_seed(run_seed: int, stream: Stream, *ids: int) -> int:
    """A 63-bit seed for `stream` at `ids`, independent of every other (stream, ids) pair."""
    seq = np.random.SeedSequence([run_seed, int(stream), *ids])
    return int(seq.generate_state(2, np.uint32).view(np.uint64)[0] >> np.uint64(1))


def generator(run_seed: int, stream: Stream, *ids: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([run_seed, int(stream), *ids])))
