"""Action distributions: the one place where actions are sampled, scored and made deterministic.

`make_distribution(action_spec)` picks the family from the action space (the `ActionSpec` of
envs/spaces.py):

| space         | distribution                  | noise per ticket       |
| ------------- | ----------------------------- | ---------------------- |
| Discrete(n)   | categorical                   | 1 uniform              |
| MultiDiscrete | product of categoricals       | 1 uniform per choice   |
| MultiBinary   | independent Bernoullis        | 1 uniform per bit      |
| Box           | diagonal Gaussian, state-independent log-std | 1 standard normal per dim |

Sampling is a deterministic function of the policy's parameters and noise drawn in advance for each
step ticket (runtime/tickets.py), so which rows share an inference batch, or when they arrive,
never changes an action. Categorical choices use inverse-CDF sampling in float64. Legal-action masks
arrive as logits of MASKED_LOGIT (set by the model, models/actor_critic.py): their probability is
exactly 0, so they are never sampled, never the mode, and add exactly 0 to the entropy. A Gaussian sample is
stored and learned from unclipped; it is clipped to the bounds only when given to the env (as SB3 and
CleanRL do).

A row's samples and log-probabilities do not depend on its place in the block either. CPU elementwise
kernels step through a contiguous tensor two vectors at a time and finish the remainder with scalar code
that rounds exp, sigmoid and softplus differently, so a row in that remainder would get other last bits
(seen on AVX2: a MultiBinary log-probability of 8 rows x 3 bits). So the Bernoullis' sigmoid and
softplus and the categorical sampler's exp run on tensors padded to whole SIMD loops (`_tail_free`);
log_softmax works row by row, and the Gaussian's exp runs on a strided view, row by row.

Inference samples with `sample` and records `log_prob`; the learner calls `log_prob` and `entropy`;
`Trainer.act` and `htsrl-aio eval` call `sample` or `mode`. The policy head that produces the
parameters is made here too (`head`), so a distribution and its parameters never disagree.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from htsrl_aio.envs.spaces import ActionSpec

Noise = Literal["uniform", "normal"]
# The logit of a masked action (sb3-contrib's MaskableCategorical uses the same): exp() of it minus any
# real logit is exactly 0 in float32 and float64, and 0 x it is 0 where infinity would make NaN.
MASKED_LOGIT = -1e8
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# Elements that a padded tensor's size is a multiple of: two vectors of the widest x86 kernels (AVX-512:
# 2 x 16 float32, 2 x 8 float64; AVX2 half that), with room to spare, so no element takes the scalar tail.
_SIMD_ELEMENTS = 64


def _tail_free(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """`x` (B, k), contiguous, with `fill` columns appended until B x columns is a multiple of
    _SIMD_ELEMENTS: an elementwise kernel then treats every row alike. Slice `[:, :k]` after."""
    step = _SIMD_ELEMENTS // math.gcd(x.shape[0], _SIMD_ELEMENTS)
    pad = -x.shape[-1] % step
    return F.pad(x, (0, pad), value=fill) if pad else x.contiguous()


def _linear(inp: int, out: int, gain: float) -> nn.Linear:
    layer = nn.Linear(inp, out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActionDistribution:
    """Sampling, log-probabilities, entropy and the mode of one action family, on batches of rows."""

    noise: Noise = "uniform"

    def __init__(self, spec: ActionSpec) -> None:
        self.spec = spec

    @property
    def noise_size(self) -> int:
        """Noise numbers drawn per ticket."""
        return self.spec.size

    def head(self, inp: int) -> nn.Module:
        """The policy's last layer: features -> this distribution's parameters (small init, as CleanRL)."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def choose(self, params: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        """Outside training (eval, Trainer.act): the mode when `rng` is None, else a sample whose noise
        comes from `rng`, a stream of the caller's own."""
        if rng is None:
            return self.mode(params)
        shape = (params.shape[0], self.noise_size)
        noise = rng.random(shape) if self.noise == "uniform" else rng.standard_normal(shape)
        return self.sample(params, torch.from_numpy(noise))


class Categoricals(ActionDistribution):
    """One categorical per choice: Discrete (one choice, actions of shape (B,)) and MultiDiscrete."""

    def __init__(self, spec: ActionSpec) -> None:
        super().__init__(spec)
        self.sizes = list(spec.sizes)
        self.single = spec.kind == "discrete"

    @property
    def noise_size(self) -> int:
        return len(self.sizes)

    def head(self, inp: int) -> nn.Module:
        return _linear(inp, sum(self.sizes), 0.01)

    def _columns(self, actions: torch.Tensor) -> torch.Tensor:
        return actions.long().reshape(actions.shape[0], len(self.sizes))

    def _shaped(self, columns: torch.Tensor) -> torch.Tensor:
        return columns[:, 0] if self.single else columns

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF: the first category whose cumulative weight exceeds u x the total. A category of
        weight 0 (a masked action, whose logit is MASKED_LOGIT) never exceeds what the one before it
        reached, so it is never chosen: at u = 0 too, and at the top, where the threshold is kept just
        below the total (u x total may round up to it), so the category that completes it is chosen."""
        columns = []
        for k, logits in enumerate(params.split(self.sizes, dim=-1)):
            z = logits.double()
            shifted = _tail_free(z - z.max(dim=-1, keepdim=True).values, MASKED_LOGIT)
            cdf = torch.exp(shifted)[:, :z.shape[-1]].cumsum(dim=-1)
            total = cdf[:, -1]
            below_total = torch.nextafter(total, torch.zeros_like(total))
            threshold = torch.minimum(noise[:, k].double() * total, below_total)
            columns.append((cdf <= threshold[:, None]).sum(dim=-1))
        return self._shaped(torch.stack(columns, dim=1))

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        columns = self._columns(actions)
        total = torch.zeros(params.shape[0], dtype=params.dtype, device=params.device)
        for k, logits in enumerate(params.split(self.sizes, dim=-1)):
            total = total + logits.log_softmax(-1).gather(-1, columns[:, k:k + 1]).squeeze(-1)
        return total

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(params.shape[0], dtype=params.dtype, device=params.device)
        for logits in params.split(self.sizes, dim=-1):
            logp = logits.log_softmax(-1)
            total = total - (logp.exp() * logp).sum(-1)
        return total

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return self._shaped(torch.stack([logits.argmax(-1) for logits in params.split(self.sizes, -1)], 1))


class Bernoullis(ActionDistribution):
    """Independent bits (MultiBinary): the parameters are one logit per bit."""

    def head(self, inp: int) -> nn.Module:
        return _linear(inp, self.spec.size, 0.01)

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(_tail_free(params.double()))[:, :params.shape[-1]]
        return (noise.double() < p).long()

    def _softplus(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """softplus(-params) and softplus(params): -log p(bit 1) and -log p(bit 0)."""
        padded, k = _tail_free(params), params.shape[-1]
        return F.softplus(-padded)[:, :k], F.softplus(padded)[:, :k]

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        bits = actions.to(params.dtype)
        minus_log_one, minus_log_zero = self._softplus(params)
        return -(bits * minus_log_one + (1 - bits) * minus_log_zero).sum(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(_tail_free(params))[:, :params.shape[-1]]
        minus_log_one, minus_log_zero = self._softplus(params)
        return (p * minus_log_one + (1 - p) * minus_log_zero).sum(-1)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return (params > 0).long()


class GaussianHead(nn.Module):
    """Mean from the features, log-std a free parameter (state-independent); params = [mean, log_std]."""

    def __init__(self, inp: int, size: int) -> None:
        super().__init__()
        self.mean = _linear(inp, size, 0.01)
        self.log_std = nn.Parameter(torch.zeros(size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mean = self.mean(features)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


class DiagGaussian(ActionDistribution):
    """Box actions: a diagonal Gaussian; samples are mean + std * (the ticket's standard normals)."""

    noise: Noise = "normal"

    def head(self, inp: int) -> nn.Module:
        return GaussianHead(inp, self.spec.size)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = params.chunk(2, dim=-1)
        return mean, log_std

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._split(params)
        return mean + log_std.exp() * noise.to(mean.dtype)

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._split(params)
        z = (actions.to(mean.dtype) - mean) / log_std.exp()
        return (-0.5 * z * z - log_std - _LOG_SQRT_2PI).sum(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        _, log_std = self._split(params)
        return (0.5 + _LOG_SQRT_2PI + log_std).sum(-1)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return self._split(params)[0]


def make_distribution(spec: ActionSpec) -> ActionDistribution:
    """The distribution of an action space (already accepted by ActionSpec.from_space)."""
    if spec.kind in ("discrete", "multi_discrete"):
        return Categoricals(spec)
    if spec.kind == "multi_binary":
        return Bernoullis(spec)
    return DiagGaussian(spec)
