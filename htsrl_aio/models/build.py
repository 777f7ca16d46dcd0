"""Pick and initialise the actor-critic network that fits an env's spaces."""

from __future__ import annotations

import torch

from htsrl_aio.config import TrainConfig
from htsrl_aio.distributions import make_distribution
from htsrl_aio.envs.factory import EnvSpec
from htsrl_aio.errors import ConfigError
from htsrl_aio.models.actor_critic import ActorCritic
from htsrl_aio.models.cnn import MIN_IMAGE_SIDE
from htsrl_aio.models.normalize import ReturnScaler
from htsrl_aio.seeding import Stream, derive_seed


def _large_images(spec: EnvSpec) -> tuple[str, ...]:
    return tuple(f.key for f in spec.obs.fields if f.image and min(f.shape[1:]) >= MIN_IMAGE_SIDE)


def uses_cnn(spec: EnvSpec, cfg: TrainConfig) -> bool:
    """Whether a CNN reads some of the observations; checks nothing (`cnn_keys` refuses a bad --model)."""
    return cfg.model != "mlp" and bool(_large_images(spec))


def cnn_keys(spec: EnvSpec, cfg: TrainConfig) -> tuple[str, ...]:
    """Observation keys read by a Nature CNN: `--model auto` takes every image key of at least
    36x36, `cnn` insists there is one, `mlp` flattens everything."""
    images = [f for f in spec.obs.fields if f.image]
    large = _large_images(spec)
    if cfg.model == "mlp":
        return ()
    if cfg.model == "cnn" and not large:
        found = ", ".join(f"{f.key} {f.shape}" for f in images) or "none"
        raise ConfigError(f"--model cnn needs an image observation (uint8, channels x height x width) of at "
                          f"least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}; this env's images: {found}. Use --model "
                          "auto (a CNN where it fits, an MLP elsewhere) or --model mlp.")
    return large


def build_model(spec: EnvSpec, cfg: TrainConfig) -> ActorCritic:
    """The run's network, initialised from the run seed without disturbing the caller's torch RNG."""
    keys = cnn_keys(spec, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
        # One return per storage row: a multi-agent env has a row per agent.
        scaler = ReturnScaler(cfg.num_envs * spec.rows_per_env, cfg.gamma) if cfg.normalize_reward else None
        return ActorCritic(spec.obs, make_distribution(spec.action), cfg.hidden, keys, cfg.precision,
                           cfg.normalize_obs, scaler, cfg.memory, cfg.memory_size, spec.critic_keys)
