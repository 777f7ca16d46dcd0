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


# Env seeds stay below 2**31: many envs seed legacy numpy (MinAtar refuses 2**32 and more) or an int32
# engine (ALE).
ENV_SEED_BOUND = 2**31


def env_reset_seed(run_seed: int, *ids: int) -> int:
    """The seed an env is reset with, for the episode named by `ids`; every env accepts it."""
    return derive_seed(run_seed, Stream.ENV_RESET, *ids) % ENV_SEED_BOUND


def generator(run_seed: int, stream: Stream, *ids: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([run_seed, int(stream), *ids])))
