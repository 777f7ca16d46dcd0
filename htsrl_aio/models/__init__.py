"""Actor-critic networks."""

from htsrl_aio.models.actor_critic import ActorCritic
from htsrl_aio.models.build import build_model, uses_cnn
from htsrl_aio.models.params import clone_params, copy_params, load_params, params_sha256
from htsrl_aio.models.recurrent import PolicyMemory

__all__ = ["ActorCritic", "PolicyMemory", "build_model", "clone_params", "copy_params", "load_params",
           "params_sha256", "uses_cnn"]
