"""Actor-critic networks."""

from htsrl_aio.models.build import build_model
from htsrl_aio.models.mlp import MLPActorCritic, params_sha256

__all__ = ["MLPActorCritic", "build_model", "params_sha256"]
