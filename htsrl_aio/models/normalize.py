"""Running normalisation of observations and rewards, held as model buffers.

Being buffers, the statistics travel with the parameters: published to inference at the swap, saved
in checkpoints, applied by `htsrl-aio eval` and `Trainer.act`, and part of `final_params_sha256`.
Only the learner updates them, once per update, from the whole rollout in (step, env) order, so they
are the same whatever the timing of collection.
"""

from __future__ import annotations

import torch
from torch import nn

CLIP = 10.0  # normalised observations and scaled rewards are clipped to +-10, as in CleanRL and SB3
EPS = 1e-8


class RunningMeanStd(nn.Module):
    """Mean and variance of everything seen so far (Chan et al.'s parallel update), in float64."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        """Fold in `batch` (rows along dim 0)."""
        batch = batch.double()
        n = batch.shape[0]
        mean, var = batch.mean(0), batch.var(0, unbiased=False)
        delta = mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + var * n + delta.square() * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + EPS)
        return scaled.clamp(-CLIP, CLIP)


class ReturnScaler(nn.Module):
    """Reward scaling by the running std of each env's discounted return (gymnasium's NormalizeReward).

    The per-env return accumulators continue across rollouts, so the scale a reward gets depends only
    on the rewards before it, in (update, step, env) order.
    """

    def __init__(self, num_envs: int, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma
        self.stats = RunningMeanStd(())
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))

    @torch.no_grad()
    def update_and_scale(self, rewards: torch.Tensor, episode_end: torch.Tensor,
                         active: torch.Tensor | None = None) -> torch.Tensor:
        """Fold in one (T, N) rollout of rewards, then return them scaled and clipped; where `active`
        (T, N) is given, only the returns of active steps are statistics."""
        for t in range(rewards.shape[0]):
            self.returns.mul_(self.gamma).add_(rewards[t].double())
            if active is None:
                self.stats.update(self.returns)
            elif active[t].any():
                self.stats.update(self.returns[active[t]])
            self.returns.masked_fill_(episode_end[t], 0.0)
        scaled = rewards / torch.sqrt(self.stats.var.to(rewards.dtype) + EPS)
        return scaled.clamp(-CLIP, CLIP)
