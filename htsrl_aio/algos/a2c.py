"""A2C's policy-gradient, value and entropy terms."""

from __future__ import annotations

import torch


def a2c_loss(logprob: torch.Tensor, advantages: torch.Tensor, value: torch.Tensor,
             returns: torch.Tensor, entropy: torch.Tensor, vf_coef: float,
             ent_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss to minimise; advantages are constants (no gradient flows into the critic through them)."""
    pg_loss = -(advantages.detach() * logprob).mean()
    v_loss = 0.5 * ((returns.detach() - value) ** 2).mean()
    entropy_mean = entropy.mean()
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy_mean
    return loss, {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy_mean.item()}
