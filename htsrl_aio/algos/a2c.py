"""A2C: the policy-gradient, value and entropy loss, and the paper's delayed-gradient update."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from htsrl_aio.algos.batch import RolloutBatch, active_mean, policy_outputs
from htsrl_aio.distributions import ActionDistribution


def a2c_loss(logprob: torch.Tensor, advantages: torch.Tensor, value: torch.Tensor,
             returns: torch.Tensor, entropy: torch.Tensor, vf_coef: float,
             ent_coef: float, active: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss to minimise; advantages are constants (no gradient flows into the critic through them).
    Means are over the `active` samples where given (`RolloutBatch.active`)."""
    pg_loss = -active_mean(advantages.detach() * logprob, active)
    v_loss = 0.5 * active_mean((returns.detach() - value) ** 2, active)
    entropy_mean = active_mean(entropy, active)
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy_mean
    return loss, {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy_mean.item()}


def a2c_update(*, model: nn.Module, behaviour: nn.Module, optimizer: torch.optim.Optimizer,
               distribution: ActionDistribution, batch: RolloutBatch, vf_coef: float, ent_coef: float,
               max_grad_norm: float, check_finite: Callable[[dict[str, float]], None]) -> dict[str, float]:
    """The paper's eq. 6: theta_{j+1} = theta_j - lr * grad L(theta_{j-1}; D_{theta_{j-1}}).

    The gradient is taken at the `behaviour` parameters (those that collected `batch`) and applied to
    `model` by the optimizer; in sync mode the two hold the same parameters, and this is plain A2C.
    """
    batch = batch.zero_inactive()
    params, value = policy_outputs(behaviour, batch)
    loss, stats = a2c_loss(distribution.log_prob(params, batch.actions), batch.advantages, value,
                           batch.returns, distribution.entropy(params), vf_coef, ent_coef, batch.active)
    check_finite(stats)
    behaviour.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(behaviour.parameters(), max_grad_norm)
    for param, behaviour_param in zip(model.parameters(), behaviour.parameters()):
        param.grad = behaviour_param.grad
    optimizer.step()
    behaviour.zero_grad(set_to_none=True)
    optimizer.zero_grad(set_to_none=True)
    return stats
