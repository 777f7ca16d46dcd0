"""One rollout flattened to (T * N) samples, as both algorithms consume it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    obs: dict[str, torch.Tensor]  # key -> (B, ...)
    actions: torch.Tensor  # (B, *action_shape)
    logprobs: torch.Tensor  # behaviour log-probabilities, recorded when the actions were sampled
    values: torch.Tensor  # behaviour values, recorded likewise
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.actions.shape[0]

    def rows(self, index: torch.Tensor) -> RolloutBatch:
        return RolloutBatch({k: v[index] for k, v in self.obs.items()}, self.actions[index],
                            self.logprobs[index], self.values[index], self.advantages[index],
                            self.returns[index])

    def split(self, size: int) -> list[RolloutBatch]:
        """Consecutive chunks of `size` samples, in order."""
        return [self.rows(torch.arange(start, min(start + size, len(self)), device=self.actions.device))
                for start in range(0, len(self), size)]
