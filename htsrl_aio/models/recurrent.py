"""The recurrent core of a policy with memory (--memory lstm|gru): one cell between encoder and heads.

Its state is one float vector per env (an LSTM's h and c side by side), so inference can carry it in a
fixed-shape block beside the observations and the storage can keep it as one array. A step first
zeroes the state of rows whose observation starts an episode: the transition's own flag decides, never
the order in which envs answered.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import torch
from torch import nn

Memory = Literal["none", "lstm", "gru"]


class RecurrentCore(nn.Module):
    def __init__(self, kind: Literal["lstm", "gru"], inp: int, size: int) -> None:
        super().__init__()
        self.lstm = kind == "lstm"
        self.rnn = nn.LSTM(inp, size) if self.lstm else nn.GRU(inp, size)
        # CleanRL's ppo_atari_lstm.py: orthogonal weights of gain 1, zero biases.
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)
        self.size = size
        self.state_size = 2 * size if self.lstm else size

    def _run(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs (L, B, size), final state) of L steps with no reset among them."""
        if self.lstm:
            h, c = state[:, :self.size][None].contiguous(), state[:, self.size:][None].contiguous()
            out, (h, c) = self.rnn(x, (h, c))
            return out, torch.cat([h[0], c[0]], dim=-1)
        out, h = self.rnn(x, state[None].contiguous())
        return out, h[0]

    def step(self, x: torch.Tensor, state: torch.Tensor,
             start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, next state) of one step for B rows: x (B, F), state (B, state_size), start (B,) bool."""
        out, state = self._run(x[None], _reset(state, start))
        return out[0], state

    def unroll(self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Outputs (L, S, size) of S sequences of L steps: x (L, S, F), state (S, state_size) before the
        first step, starts (L, S) the episode-start flag of each step.

        The steps run in one call of the cell's fused kernel per stretch in which no sequence begins an
        episode (states are reset between stretches): as many calls as steps where some episode begins,
        not one per step. The kernel's rows do not depend on each other or on the stretch's length, so
        the outputs are the bits of `step` called once per step (tests/test_recurrent.py checks it).
        """
        cuts = [0, *(1 + torch.nonzero(starts[1:].any(dim=1)).flatten()).tolist(), x.shape[0]]
        outputs = []
        for begin, end in itertools.pairwise(cuts):
            out, state = self._run(x[begin:end], _reset(state, starts[begin]))
            outputs.append(out)
        return torch.cat(outputs)


def _reset(state: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Zero the state of rows whose observation begins an episode."""
    return torch.where(start.unsqueeze(-1), torch.zeros_like(state), state)


class PolicyMemory:
    """The recurrent state of one env between calls, for code that acts step by step outside training
    (`Trainer.act`, eval): starts empty, advances with every action, and `reset()` where an episode
    ends. A memoryless policy's is empty and changes nothing."""

    def __init__(self, state_size: int) -> None:
        self.state = np.zeros((1, state_size), np.float32)
        self.start = np.ones(1, bool)

    def reset(self) -> None:
        """The next observation begins an episode."""
        self.state = np.zeros_like(self.state)
        self.start = np.ones(1, bool)

    def advance(self, state: np.ndarray) -> None:
        """Keep the state the last step returned ((1, state_size))."""
        self.state = np.asarray(state, np.float32).reshape(self.state.shape)
        self.start = np.zeros(1, bool)
