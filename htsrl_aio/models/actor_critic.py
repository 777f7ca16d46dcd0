"""The actor-critic network for any observation layout and action distribution.

    observation keys --ObsEncoder--> features --actor--> distribution parameters
                                              --critic--> state value

`ObsEncoder` reads every key of the `ObsLayout`: a Nature CNN per image key (when the model kind is
"cnn" for it), everything else flattened to floats (normalised by running statistics with
--normalize-obs), all concatenated, like SB3's MultiInputPolicy. The actor and critic are separate
tanh MLPs over the features (CleanRL's layout), except over CNN features alone, where they are single
linear layers on the shared trunk (the Nature DQN/PPO agent).

A legal-action mask (the observation key `action_mask`, envs/action_masks.py) is not a feature: the
encoder leaves it out and `_params` sets the logits of masked actions to MASKED_LOGIT, so every path that
reads the policy's parameters (inference, the learner, eval, Trainer.act, export) gets the masked ones.

With --memory the features go through a `RecurrentCore` first and the heads read its output (CleanRL's
ppo_atari_lstm.py and sb3-contrib's RecurrentPPO with a shared LSTM): `step` acts one step carrying
each env's state, `unroll` replays whole sequences from their stored start states for the learner.
A memoryless policy has state_size 0 and `step` passes its empty state through.

A centralised critic (--critic global, MAPPO) has an encoder of its own over `critic_keys` (the env's
global state, and the agent's index with --agent-id), which the actor's encoder leaves out: the actor
reads the agent's own observation only, the critic only those keys. It stays feedforward with
--memory (the core carries the actor's features only). `act` runs the actor alone, so acting (eval,
`Trainer.act`, export) needs no global state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from htsrl_aio.distributions import MASKED_LOGIT, ActionDistribution
from htsrl_aio.envs.spaces import ObsLayout
from htsrl_aio.models.cnn import FEATURES, NatureCNN, Precision
from htsrl_aio.models.mlp import layer, mlp
from htsrl_aio.models.normalize import ReturnScaler, RunningMeanStd
from htsrl_aio.models.recurrent import Memory, RecurrentCore

Obs = dict[str, torch.Tensor]


class ObsEncoder(nn.Module):
    def __init__(self, layout: ObsLayout, cnn_keys: tuple[str, ...], precision: Precision,
                 normalize: bool, keys: tuple[str, ...] | None = None) -> None:
        """`keys`: the keys it reads (default every key of `layout`)."""
        super().__init__()
        keys = layout.keys if keys is None else keys
        self.cnn_keys = tuple(k for k in cnn_keys if k in keys)
        self.flat_keys = tuple(k for k in keys if k not in cnn_keys and k != layout.mask_key)
        shapes = {f.key: f.shape for f in layout.fields}
        self.cnns = nn.ModuleDict({k: NatureCNN(shapes[k], precision) for k in self.cnn_keys})
        self.flat_sizes = {k: math.prod(shapes[k]) for k in self.flat_keys}
        self.scales = {f.key: f.scale for f in layout.fields if f.key in self.flat_keys and f.scale != 1.0}
        self.stats = nn.ModuleDict({k: RunningMeanStd((self.flat_sizes[k],)) for k in self.flat_keys}
                                   if normalize else {})
        self.size = FEATURES * len(self.cnn_keys) + sum(self.flat_sizes.values())

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
                 return_scaler: ReturnScaler | None = None, memory: Memory = "none",
                 memory_size: int = 128, critic_keys: tuple[str, ...] = ()) -> None:
        """`critic_keys`: the keys a centralised critic reads, and the actor not (empty: the critic reads
        the actor's features)."""
        super().__init__()
        actor_keys = tuple(k for k in layout.keys if k not in critic_keys)
        self.encoder = ObsEncoder(layout, cnn_keys, precision, normalize_obs, actor_keys)
        self.mask_key = layout.mask_key
        self.core = None if memory == "none" else RecurrentCore(memory, self.encoder.size, memory_size)
        self.state_size = 0 if self.core is None else self.core.state_size
        trunk = self.encoder.size if self.core is None else memory_size
        self.actor = mlp(trunk, _hidden(self.encoder, hidden),
                         distribution.head(_width(self.encoder, hidden, trunk)))
        # Built after the actor, so a run with --critic local draws its initial parameters as before.
        self.critic_encoder = ObsEncoder(layout, cnn_keys, precision, normalize_obs, critic_keys) \
            if critic_keys else None
        critic_in = self.critic_encoder or self.encoder
        critic_trunk = trunk if self.critic_encoder is None else self.critic_encoder.size
        self.critic = mlp(critic_trunk, _hidden(critic_in, hidden),
                          layer(_width(critic_in, hidden, critic_trunk), 1, 1.0))
        self.return_scaler = return_scaler  # --normalize-reward: its statistics travel as buffers too

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution parameters, value) for a batch of observations (a memoryless policy)."""
        return self._heads(self.encoder(obs), obs)

    def _heads(self, features: torch.Tensor, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        return self._params(features, obs), self._value(features, obs)

    def _params(self, features: torch.Tensor, obs: Obs) -> torch.Tensor:
        """The actor's distribution parameters, masked actions' logits set to MASKED_LOGIT."""
        params = self.actor(features)
        if self.mask_key is not None:
            params = params.masked_fill(obs[self.mask_key] == 0, MASKED_LOGIT)
        return params

    def _value(self, features: torch.Tensor, obs: Obs) -> torch.Tensor:
        """The critic's value: of the actor's features, or of its own encoder's (--critic global)."""
        own = features if self.critic_encoder is None else self.critic_encoder(obs)
        return self.critic(own).squeeze(-1)

    def act(self, obs: Obs, state: torch.Tensor | None = None,
            start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(parameters, next state) of one step, the actor alone: what acting needs, with no value (and
        so no global state). A memoryless policy needs no state and passes it through."""
        features = self.encoder(obs)
        if self.core is not None:
            assert state is not None and start is not None, "a policy with memory acts from its state"
            features, state = self.core.step(features, state, start)
        return self._params(features, obs), state

    def update_stats(self, obs: Obs) -> None:
        """Fold a batch of observations into the running statistics of every encoder (--normalize-obs)."""
        self.encoder.update_stats(obs)
        if self.critic_encoder is not None:
            self.critic_encoder.update_stats(obs)

    def step(self, obs: Obs, state: torch.Tensor,
             start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(parameters, value, next state) of one step for B rows; state (B, state_size), start (B,) bool
        (the row's observation begins an episode: its state is zeroed first)."""
        if self.core is None:
            return *self.forward(obs), state
        out, state = self.core.step(self.encoder(obs), state, start)
        return *self._heads(out, obs), state

    def unroll(self, obs: Obs, state: torch.Tensor,
               starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(parameters, values) of S sequences of L steps, sample s * L + l being step l of sequence s:
        obs (S * L, ...), state (S, state_size) before each sequence's first step, starts (S * L,)."""
        assert self.core is not None, "unroll needs a recurrent core (--memory)"
        sequences = state.shape[0]
        features = self.encoder(obs)
        steps = features.shape[0] // sequences
        out = self.core.unroll(features.view(sequences, steps, -1).transpose(0, 1), state,
                               starts.view(sequences, steps).t())
        return self._heads(out.transpose(0, 1).reshape(sequences * steps, -1), obs)

    def value(self, obs: Obs) -> torch.Tensor:
        """The value of a memoryless policy (without its actor head)."""
        critic_in = self.encoder(obs) if self.critic_encoder is None else self.critic_encoder(obs)
        return self.critic(critic_in).squeeze(-1)


def _hidden(encoder: ObsEncoder, hidden: tuple[int, ...]) -> tuple[int, ...]:
    """A head's hidden layers: none over CNN features alone, where the CNN trunk (and the core) is the
    shared hidden layer."""
    return () if encoder.cnn_keys and not encoder.flat_keys else hidden


def _width(encoder: ObsEncoder, hidden: tuple[int, ...], trunk: int) -> int:
    """The width a head's last layer reads."""
    layers = _hidden(encoder, hidden)
    return layers[-1] if layers else trunk
