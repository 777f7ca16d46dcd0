"""One rollout flattened to (T * N) samples, as both algorithms consume it.

A policy with memory learns from whole sequences instead of shuffled steps: `Sequences` cuts the
rollout into each env's rollout (or --bptt chunks of it), each with the recurrent state stored where it
begins, and orders the samples sequence by sequence, so a minibatch takes whole sequences (`select`)
and the model replays them (`policy_outputs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Sequences:
    """A (T, N) rollout cut into S = N * T / L sequences of L steps: env i's steps kL .. kL + L - 1 are
    sequence k * N + i, and sample s * L + l is step l of sequence s."""

    length: int
    start_states: torch.Tensor  # (S, state_size): the state stored before each sequence's first step
    starts: torch.Tensor  # (S * L,) whether each sample's observation begins an episode

    @classmethod
    def cut(cls, memory: torch.Tensor, episode_starts: torch.Tensor, length: int) -> Sequences:
        """From a storage's `memory` (T + 1, N, state_size) and `episode_starts` (T + 1, N)."""
        steps = memory.shape[0] - 1
        empty = torch.empty(0, dtype=torch.bool)
        sequences = cls(length, memory[:steps:length].reshape(-1, memory.shape[-1]), empty)
        return dataclasses.replace(sequences, starts=sequences.order(episode_starts[:-1]))

    def order(self, x: torch.Tensor) -> torch.Tensor:
        """(T, N, ...) in rollout order -> (S * L, ...) in sequence order."""
        steps, envs, rest = x.shape[0], x.shape[1], x.shape[2:]
        chunks = x.reshape(steps // self.length, self.length, envs, *rest).transpose(1, 2)
        return chunks.reshape(steps * envs, *rest)

    def unorder(self, x: torch.Tensor, envs: int) -> torch.Tensor:
        """The inverse of `order`: (S * L, ...) -> (T, N, ...)."""
        steps, rest = x.shape[0] // envs, x.shape[1:]
        chunks = x.reshape(steps // self.length, envs, self.length, *rest).transpose(1, 2)
        return chunks.reshape(steps, envs, *rest)


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
    # --memory: (S, state_size) the state before each sequence, and (B,) the episode-start flags; the
    # samples are then in sequence order (`Sequences`).
    start_states: torch.Tensor | None = None
    episode_starts: torch.Tensor | None = None
    # --memory in a multi-agent run: (B,) whether each sample is a transition of its agent. Sequences
    # keep the steps of agents that had left (the replay runs through them; their data is zeroed) and
    # the losses average over active samples only (`active_mean`).
    active: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.actions.shape[0]

    @property
    def units(self) -> int:
        """What minibatches are drawn from: samples, or whole sequences for a policy with memory."""
        return len(self) if self.start_states is None else self.start_states.shape[0]

    def select(self, units: torch.Tensor) -> tuple[torch.Tensor, RolloutBatch]:
        """The sample rows of these units (samples or sequences), and the batch of them."""
        if self.start_states is None:
            return units, self.rows(units)
        length = len(self) // self.start_states.shape[0]
        rows = (units[:, None] * length + torch.arange(length, device=units.device)).flatten()
        return rows, self.rows(rows, units)

    def rows(self, index: torch.Tensor, sequences: torch.Tensor | None = None) -> RolloutBatch:
        def pick(x: torch.Tensor | None, at: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None or at is None else x[at]

        return RolloutBatch({k: v[index] for k, v in self.obs.items()}, self.actions[index],
                            self.logprobs[index], self.values[index], self.advantages[index],
                            self.returns[index], pick(self.proximal_logprobs, index),
                            pick(self.start_states, sequences), pick(self.episode_starts, index),
                            pick(self.active, index))

    def zero_inactive(self) -> RolloutBatch:
        """The batch with the data of inactive samples zeroed: whatever absent steps stored, every loss
        term of theirs is finite and masked to exactly nothing."""
        if self.active is None:
            return self

        def zeroed(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.where(self.active, x, torch.zeros_like(x))

        return dataclasses.replace(self, logprobs=zeroed(self.logprobs), values=zeroed(self.values),
                                   advantages=zeroed(self.advantages), returns=zeroed(self.returns),
                                   proximal_logprobs=zeroed(self.proximal_logprobs))


def active_mean(x: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """The mean of `x` over the active samples (all of them when `active` is None)."""
    if active is None:
        return x.mean()
    return torch.where(active, x, torch.zeros_like(x)).sum() / active.sum().clamp(min=1)


def normalized_advantages(advantages: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """Advantages shifted and scaled by the mean and std of the active samples' (CleanRL's 1e-8)."""
    if active is None:
        return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    chosen = advantages[active]
    if chosen.numel() < 2:  # no spread to scale by
        return torch.where(active, advantages - active_mean(advantages, active), torch.zeros_like(advantages))
    scaled = (advantages - chosen.mean()) / (chosen.std() + 1e-8)
    return torch.where(active, scaled, torch.zeros_like(scaled))


def policy_outputs(model: nn.Module, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(distribution parameters, values) of the batch's samples: per sample, or by replaying its sequences
    from their start states."""
    if batch.start_states is None:
        return model(batch.obs)
    return model.unroll(batch.obs, batch.start_states, batch.episode_starts)
