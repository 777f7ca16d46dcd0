"""Pick and initialise the actor-critic network that fits an env's observations."""

from __future__ import annotations

import math

import torch

from htsrl_aio.config import ConfigError, TrainConfig
from htsrl_aio.envs.factory import EnvSpec
from htsrl_aio.models.cnn import NatureCNNActorCritic
from htsrl_aio.models.mlp import MLPActorCritic
from htsrl_aio.seeding import Stream, derive_seed

MIN_IMAGE_SIDE = 36  # the Nature CNN's convolutions need at least 36x36 pixels


def choose_model(spec: EnvSpec, cfg: TrainConfig) -> str:
    """'cnn' or 'mlp': `--model auto` takes the CNN for (C, H, W) images, the MLP otherwise."""
    image = len(spec.obs_shape) == 3
    if cfg.model == "auto":
        return "cnn" if image and min(spec.obs_shape[1:]) >= MIN_IMAGE_SIDE else "mlp"
    if cfg.model == "mlp" and image:
        raise ConfigError(f"--model mlp cannot learn from image observations of shape {spec.obs_shape}; "
                          "use --model cnn (or auto).")
    if cfg.model == "cnn" and not (image and min(spec.obs_shape[1:]) >= MIN_IMAGE_SIDE):
        raise ConfigError(f"--model cnn needs (channels, height, width) images of at least "
                          f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}, but observations have shape {spec.obs_shape}; "
                          "use --model mlp (or auto).")
    return cfg.model


def build_model(spec: EnvSpec, cfg: TrainConfig) -> torch.nn.Module:
    """The run's network, initialised from the run seed without disturbing the caller's torch RNG."""
    kind = choose_model(spec, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
        if kind == "cnn":
            return NatureCNNActorCritic(spec.obs_shape, spec.num_actions, cfg.precision)
        return MLPActorCritic(math.prod(spec.obs_shape), spec.num_actions, cfg.hidden)
