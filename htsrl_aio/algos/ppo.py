"""PPO: the clipped surrogate loss and the update (epochs of shuffled minibatches)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from htsrl_aio.algos.batch import RolloutBatch, active_mean, normalized_advantages, policy_outputs
from htsrl_aio.distributions import ActionDistribution


def ppo_loss(new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
             new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor,
             entropy: torch.Tensor, clip_coef: float, clip_vloss: bool, vf_coef: float,
             ent_coef: float, active: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss to minimise, and diagnostics. `old_logprob` is the centre of the trust region. Means are
    over the `active` samples where given (`RolloutBatch.active`)."""
    logratio = new_logprob - old_logprob
    ratio = logratio.exp()
    pg_loss = active_mean(torch.max(-advantages * ratio,
                                    -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)), active)
    if clip_vloss:
        v_clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * active_mean(torch.max((new_value - returns) ** 2, (v_clipped - returns) ** 2), active)
    else:
        v_loss = 0.5 * active_mean((new_value - returns) ** 2, active)
    entropy_mean = active_mean(entropy, active)
    # The entropy term is a bonus: subtracting it from the loss rewards exploration.
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy_mean
    with torch.no_grad():
        approx_kl = active_mean((ratio - 1) - logratio, active)
        clipfrac = active_mean(((ratio - 1).abs() > clip_coef).float(), active)
    return loss, {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy_mean.item(),
                  "approx_kl": approx_kl.item(), "clipfrac": clipfrac.item()}


def ppo_update(*, model: nn.Module, optimizer: torch.optim.Optimizer, distribution: ActionDistribution,
               batch: RolloutBatch, order: torch.Generator, epochs: int, minibatches: int,
               clip_coef: float, clip_vloss: bool, vf_coef: float, ent_coef: float, max_grad_norm: float,
               norm_adv: bool,
               check_finite: Callable[[dict[str, float]], None]) -> dict[str, float]:
    """`epochs` passes of `minibatches` shuffled minibatches over `batch` (of samples, or of whole
    sequences for a policy with memory); mean diagnostics.

    The ratio is centred on `batch.proximal_logprobs` where the batch has them (decoupled PPO: hts,
    --ppo-trust-region current, whose data is one update old) and each sample's advantage is weighted
    by pi_current / pi_behaviour (Hilton et al. 2021), instead of letting the previous update use up
    the trust region; otherwise on the behaviour log-probs. The value clip is centred on
    `batch.values`, which in decoupled PPO are the current critic's (the learner's `_batch`): centred
    on the behaviour critic's, it would freeze the critic wherever the previous update already moved
    it by more than the clip range.
    """
    units = batch.units  # samples, or whole sequences for a policy with memory
    batch = batch.zero_inactive()
    old_logprobs, lag_weights = batch.logprobs, None
    if batch.proximal_logprobs is not None:
        old_logprobs = batch.proximal_logprobs
        lag_weights = (batch.proximal_logprobs - batch.logprobs).exp()
    totals: dict[str, float] = {}
    for _ in range(epochs):
        perm = torch.randperm(units, generator=order).to(batch.actions.device)
        # Sizes differ by one at most where `minibatches` does not divide the units (a multi-agent
        # batch without the steps of agents that had left); where it divides, as perm.split would.
        for chosen in perm.tensor_split(minibatches):
            mb, part = batch.select(chosen)
            params, value = policy_outputs(model, part)
            advantages = part.advantages
            if norm_adv:
                advantages = normalized_advantages(advantages, part.active)
            if lag_weights is not None:
                advantages = advantages * lag_weights[mb]
            loss, stats = ppo_loss(distribution.log_prob(params, part.actions), old_logprobs[mb], advantages,
                                   value, part.values, part.returns, distribution.entropy(params),
                                   clip_coef, clip_vloss, vf_coef, ent_coef, part.active)
            check_finite(stats)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            for key, value_ in stats.items():
                totals[key] = totals.get(key, 0.0) + value_
    steps = epochs * minibatches
    return {key: total / steps for key, total in totals.items()}
