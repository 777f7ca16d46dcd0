"""Actor-critic networks."""

from htsrl_aio.models.mlp import MLPActorCritic, params_sha256

__all__ = ["MLPActorCritic", "params_sha256"]
