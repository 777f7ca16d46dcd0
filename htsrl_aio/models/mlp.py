"""MLP building blocks (orthogonal init, tanh, as in CleanRL)."""

from __future__ import annotations

import math

from torch import nn


def layer(inp: int, out: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights of `gain` and zero bias."""
    linear = nn.Linear(inp, out)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


def mlp(inp: int, hidden: tuple[int, ...], last: nn.Module) -> nn.Sequential:
    """tanh hidden layers of the given sizes, then `last` (which must take the last hidden size)."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [layer(inp, size, math.sqrt(2)), nn.Tanh()]
        inp = size
    layers.append(last)
    return nn.Sequential(*layers)
