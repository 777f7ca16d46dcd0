"""The algorithms: losses named like the math, advantage estimation, and one update per algorithm."""

from htsrl_aio.algos.a2c import a2c_loss, a2c_update
from htsrl_aio.algos.advantages import gae
from htsrl_aio.algos.batch import RolloutBatch, Sequences, policy_outputs
from htsrl_aio.algos.ppo import ppo_loss, ppo_update

__all__ = ["RolloutBatch", "Sequences", "a2c_loss", "a2c_update", "gae", "policy_outputs", "ppo_loss",
           "ppo_update"]
