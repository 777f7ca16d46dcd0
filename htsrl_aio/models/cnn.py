"""Nature CNN trunk for image observations (Mnih et al. 2015; CleanRL's Atari agent).

Three convolutions and a 512-unit layer. Observations arrive as uint8 (4 stacked 84x84 frames for
Atari) and become floats in [0, 1] only here, so storage, pipes and inference batches carry a
quarter of the bytes.

`precision="bf16"` runs the trunk under bfloat16 autocast (its output is cast back to float32). On a
CPU with AVX-512 bf16 that makes a forward+backward pass 2.3-2.7x faster; measured in
docs/benchmarks.md, where the learning check shows the curve it gives.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from htsrl_aio.models.mlp import layer

Precision = Literal["fp32", "bf16"]
MIN_IMAGE_SIDE = 36  # the Nature CNN's convolutions need at least 36x36 pixels
FEATURES = 512


def _conv(inp: int, out: int, kernel: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(inp, out, kernel, stride=stride)
    nn.init.orthogonal_(conv.weight, math.sqrt(2))
    nn.init.zeros_(conv.bias)
    return conv


class NatureCNN(nn.Module):
    """(B, C, H, W) uint8 images, H and W at least 36 -> (B, 512) float32 features."""

    def __init__(self, obs_shape: tuple[int, ...], precision: Precision = "fp32") -> None:
        super().__init__()
        channels, height, width = obs_shape
        convs = nn.Sequential(
            _conv(channels, 32, 8, 4), nn.ReLU(),
            _conv(32, 64, 4, 2), nn.ReLU(),
            _conv(64, 64, 3, 1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = convs(torch.zeros(1, channels, height, width)).shape[1]
        self.trunk = nn.Sequential(*convs, layer(flat, FEATURES, math.sqrt(2)), nn.ReLU())
        self.precision = precision

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.trunk(x).float()
