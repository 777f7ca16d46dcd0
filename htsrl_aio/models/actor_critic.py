"""The actor-critic network for any observation layout and action distribution.

    observation keys --ObsEncoder--> features --actor--> distribution parameters
                                              --critic--> state value

`ObsEncoder` reads every key of the `ObsLayout`: a Nature CNN per image key (when the model kind is
"cnn" for it), everything else flattened to floats (normalised by running statistics with
--normalize-obs), all concatenated, like SB3's MultiInputPolicy. The actor and critic are separate
tanh MLPs over the features (CleanRL's layout), except over CNN features alone, where they are single
linear layers on the shared trunk (the Nature DQN/PPO agent).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from htsrl_aio.distributions import ActionDistribution
from htsrl_aio.envs.spaces import ObsLayout
from htsrl_aio.models.cnn import FEATURES, NatureCNN, Precision
from htsrl_aio.models.mlp import layer, mlp
from htsrl_aio.models.normalize import ReturnScaler, RunningMeanStd

Obs = dict[str, torch.Tensor]


class ObsEncoder(nn.Module):
    def __init__(self, layout: ObsLayout, cnn_keys: tuple[str, ...], precision: Precision,
                 normalize: bool) -> None:
        super().__init__()
        self.cnn_keys = cnn_keys
        self.flat_keys = tuple(k for k in layout.keys if k not in cnn_keys)
        shapes = {f.key: f.shape for f in layout.fields}
        self.cnns = nn.ModuleDict({k: NatureCNN(shapes[k], precision) for k in cnn_keys})
        self.flat_sizes = {k: math.prod(shapes[k]) for k in self.flat_keys}
        self.scales = {f.key: f.scale for f in layout.fields if f.key in self.flat_keys and f.scale != 1.0}
        self.stats = nn.ModuleDict({k: RunningMeanStd((self.flat_sizes[k],)) for k in self.flat_keys}
                                   if normalize else {})
        self.size = FEATURES * len(cnn_keys) + sum(self.flat_sizes.values())

    def _floats(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """A flattened key as floats; the bytes of a Box(0, 255, uint8) in [0, 1] (ObsField.scale), as the
        CNN reads its images, before the --normalize-obs statistics see them."""
        x = x.float().flatten(1)
        return x * self.scales[key] if key in self.scales else x

    def _flat(self, key: str, x: torch.Tensor) -> torch.Tensor:
        x = self._floats(key, x)
        return self.stats[key].normalize(x) if key in self.stats else x

    def forward(self, obs: Obs) -> torch.Tensor:
        parts = [self.cnns[k](obs[k]) for k in self.cnn_keys]
        parts += [self._flat(k, obs[k]) for k in self.flat_keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def update_stats(self, obs: Obs) -> None:
        """Fold a batch of observations into the running statistics (no-op without --normalize-obs)."""
        for key, stats in self.stats.items():
            stats.update(self._floats(key, obs[key]))


class ActorCritic(nn.Module):
    def __init__(self, layout: ObsLayout, distribution: ActionDistribution, hidden: tuple[int, ...],
                 cnn_keys: tuple[str, ...] = (), precision: Precision = "fp32", normalize_obs: bool = False,
                 return_scaler: ReturnScaler | None = None) -> None:
        super().__init__()
        self.encoder = ObsEncoder(layout, cnn_keys, precision, normalize_obs)
        if cnn_keys and not self.encoder.flat_keys:
            hidden = ()  # the CNN trunk is the shared hidden layer
        width = hidden[-1] if hidden else self.encoder.size
        self.actor = mlp(self.encoder.size, hidden, distribution.head(width))
        self.critic = mlp(self.encoder.size, hidden, layer(width, 1, 1.0))
        self.return_scaler = return_scaler  # --normalize-reward: its statistics travel as buffers too

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution parameters, value) for a batch of observations."""
        features = self.encoder(obs)
        return self.actor(features), self.critic(features).squeeze(-1)

    def value(self, obs: Obs) -> torch.Tensor:
        return self.critic(self.encoder(obs)).squeeze(-1)
