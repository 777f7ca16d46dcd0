"""PPO's clipped surrogate, (optionally clipped) value loss and entropy bonus."""

from __future__ import annotations

import torch


def ppo_loss(new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
             new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor,
             entropy: torch.Tensor, clip_coef: float, clip_vloss: bool, vf_coef: float,
             ent_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss to minimise, and diagnostics. `old_*` come from the behaviour policy that acted."""
    logratio = new_logprob - old_logprob
    ratio = logratio.exp()
    pg_loss = torch.max(-advantages * ratio,
                        -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    if clip_vloss:
        v_clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((new_value - returns) ** 2).mean()
    entropy_mean = entropy.mean()
    # The entropy term is a bonus: subtracting it from the loss rewards exploration.
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy_mean
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1).abs() > clip_coef).float().mean()
    return loss, {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy_mean.item(),
                  "approx_kl": approx_kl.item(), "clipfrac": clipfrac.item()}
