"""Nature CNN actor-critic for image observations (Mnih et al. 2015; CleanRL's Atari agent).

Three convolutions and a 512-unit layer form a trunk shared by the policy and value heads.
Observations arrive as uint8 (4 stacked 84x84 frames for Atari) and become floats in [0, 1] only
here, so storage, pipes and inference batches carry a quarter of the bytes.

`precision="bf16"` runs the trunk under bfloat16 autocast (heads and outputs stay float32). On a CPU
with AVX-512 bf16 that makes a forward+backward pass 2.3-2.7x faster; measured in docs/benchmarks.md,
where the learning check shows the curve it gives.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16"]


def _init(layer: nn.Conv2d | nn.Linear, gain: float) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class NatureCNNActorCritic(nn.Module):
    """Categorical policy and state value over (C, H, W) uint8 images; H and W at least 36."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, precision: Precision = "fp32") -> None:
        super().__init__()
        channels, height, width = obs_shape
        relu_gain = math.sqrt(2)
        convs = nn.Sequential(
            _init(nn.Conv2d(channels, 32, 8, stride=4), relu_gain), nn.ReLU(),
            _init(nn.Conv2d(32, 64, 4, stride=2), relu_gain), nn.ReLU(),
            _init(nn.Conv2d(64, 64, 3, stride=1), relu_gain), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = convs(torch.zeros(1, channels, height, width)).shape[1]
        self.trunk = nn.Sequential(*convs, _init(nn.Linear(flat, 512), relu_gain), nn.ReLU())
        self.actor = _init(nn.Linear(512, num_actions), 0.01)
        self.critic = _init(nn.Linear(512, 1), 1.0)
        self.precision = precision

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.trunk(x).float()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, value) for a batch of observations."""
        hidden = self._features(obs)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self._features(obs)).squeeze(-1)
