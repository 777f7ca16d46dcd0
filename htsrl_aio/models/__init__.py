"""Actor-critic networks."""

from htsrl_aio.models.actor_critic import ActorCritic
from htsrl_aio.models.build import build_model
from htsrl_aio.models.mlp import params_sha256

__all__ = ["ActorCritic", "build_model", "params_sha256"]
