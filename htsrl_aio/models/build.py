"""Pick and initialise the actor-critic network that fits an env's observations."""

from __future__ import annotations

import math

import torch

from htsrl_aio.config import TrainConfig
from htsrl_aio.envs.factory import EnvSpec
from htsrl_aio.models.mlp import MLPActorCritic
from htsrl_aio.seeding import Stream, derive_seed


def build_model(spec: EnvSpec, cfg: TrainConfig) -> torch.nn.Module:
    """The run's network, initialised from the run seed without disturbing the caller's torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
        return MLPActorCritic(math.prod(spec.obs_shape), spec.num_actions, cfg.hidden)
