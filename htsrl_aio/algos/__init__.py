"""Losses and advantage estimators: pure functions of tensors, named like the math."""

from htsrl_aio.algos.a2c import a2c_loss
from htsrl_aio.algos.advantages import gae
from htsrl_aio.algos.ppo import ppo_loss

__all__ = ["a2c_loss", "gae", "ppo_loss"]
