"""One rollout flattened to (T * N) samples, as both algorithms consume it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    obs: dict[str, torch.Tensor]  # key -> (B, ...)
    actions: torch.Tensor  # (B, *action_shape)
    logprobs: torch.Tensor  # behaviour log-probabilities, recorded when the actions were sampled
    # The values the advantages came from: the behaviour critic's, recorded likewise, or in decoupled
    # PPO the critic's the update starts from.
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    # Decoupled PPO only: log-probabilities under the parameters the update starts from.
    proximal_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.actions.shape[0]

    def rows(self, index: torch.Tensor) -> RolloutBatch:
        return RolloutBatch({k: v[index] for k, v in self.obs.items()}, self.actions[index],
                            self.logprobs[index], self.values[index], self.advantages[index],
                            self.returns[index],
                            None if self.proximal_logprobs is None else self.proximal_logprobs[index])
