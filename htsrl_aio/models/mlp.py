"""MLP actor-critic for vector observations (separate actor and critic trunks, as in CleanRL)."""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn


def _layer(inp: int, out: int, gain: float) -> nn.Linear:
    layer = nn.Linear(inp, out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _trunk(inp: int, hidden: tuple[int, ...], out: int, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [_layer(inp, size, math.sqrt(2)), nn.Tanh()]
        inp = size
    layers.append(_layer(inp, out, out_gain))
    return nn.Sequential(*layers)


class MLPActorCritic(nn.Module):
    """Categorical policy and state value over flat observations."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        self.actor = _trunk(obs_dim, hidden, num_actions, out_gain=0.01)
        self.critic = _trunk(obs_dim, hidden, 1, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, value) for a batch of observations of any dtype."""
        x = obs.float().flatten(1)
        return self.actor(x), self.critic(x).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs.float().flatten(1)).squeeze(-1)


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in state_dict order, as little-endian bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
