"""RolloutStorage: one rollout of T steps for N envs, every slot addressed by its ticket (step, env).

Its arrays live in shared memory: env workers write next observations straight into `obs`, and the
learner process reads the whole rollout without a copy. `obs[T]` is the
bootstrap observation, which also becomes `obs[0]` of the next rollout, so consecutive rollouts are
exactly consecutive transitions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from htsrl_aio.envs.replica import StepResult


def storage_layout(num_envs: int, rollout_len: int, obs_shape: tuple[int, ...],
                   obs_dtype: np.dtype) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every array of one storage; all of them live in shared memory."""
    shape = (rollout_len, num_envs)
    return {
        "obs": ((rollout_len + 1, num_envs, *obs_shape), np.dtype(obs_dtype)),
        "actions": (shape, np.dtype(np.int64)),
        "logprobs": (shape, np.dtype(np.float32)),
        "values": (shape, np.dtype(np.float32)),
        "rewards": (shape, np.dtype(np.float32)),
        "terminated": (shape, np.dtype(bool)),
        "truncated": (shape, np.dtype(bool)),
    }


class RolloutStorage:
    ARRAYS = ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated")

    def __init__(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        self.index = index  # which of the two storages; workers and the learner address it by this
        self.obs = arrays["obs"]  # (T + 1, N, *obs_shape)
        self.actions = arrays["actions"]  # (T, N) like the rest
        self.logprobs = arrays["logprobs"]
        self.values = arrays["values"]
        self.rewards = arrays["rewards"]
        self.terminated = arrays["terminated"]
        self.truncated = arrays["truncated"]
        # Final observations of time-limit truncations, by (step, env): rare, so kept sparse.
        self.truncated_obs: dict[tuple[int, int], np.ndarray] = {}
        self.rollout = -1  # index of the rollout held, -1 before the first

    @classmethod
    def zeros(cls, index: int, num_envs: int, rollout_len: int, obs_shape: tuple[int, ...],
              obs_dtype: type = np.float32) -> RolloutStorage:
        """A storage in ordinary memory (for code that needs no other process)."""
        layout = storage_layout(num_envs, rollout_len, obs_shape, obs_dtype)
        return cls(index, {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout.items()})

    @property
    def rollout_len(self) -> int:
        return self.actions.shape[0]

    def begin(self, rollout: int) -> None:
        self.rollout = rollout
        self.truncated_obs.clear()

    def record_action(self, step: int, env: int, action: int, logprob: float, value: float) -> None:
        self.actions[step, env] = action
        self.logprobs[step, env] = logprob
        self.values[step, env] = value

    def record_step(self, step: int, env: int, result: StepResult, final_obs: np.ndarray) -> None:
        self.rewards[step, env] = result.reward
        self.terminated[step, env] = result.terminated
        # A step that both terminates and truncates is a termination: nothing to bootstrap from.
        truncated = result.truncated and not result.terminated
        self.truncated[step, env] = truncated
        if truncated:
            self.truncated_obs[(step, env)] = final_obs.copy()

    def continue_from(self, previous: RolloutStorage) -> None:
        """Start this rollout where `previous` ended: its bootstrap obs is our first obs."""
        self.obs[0] = previous.obs[-1]
