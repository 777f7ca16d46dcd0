"""Generalised advantage estimation over a (T, N) rollout."""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
        terminated: torch.Tensor, episode_end: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (advantages, returns), each (T, N).

    `next_values[t]` is the value of the observation that followed step t: values[t+1] inside an
    episode, the bootstrap value after the last step, or the value of the final observation when the
    episode was truncated. `terminated` drops the bootstrap (no future after a true end);
    `episode_end` (terminated or truncated) cuts the lambda-trace so two episodes never mix.
    With lam = 1 this is the n-step return used by A2C.
    """
    delta = rewards + gamma * next_values * (~terminated) - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    carry = gamma * lam * (~episode_end).to(rewards.dtype)
    for t in reversed(range(rewards.shape[0])):
        running = delta[t] + carry[t] * running
        advantages[t] = running
    return advantages, advantages + values
