"""RolloutStorage: one rollout of T steps for N envs, every slot addressed by its ticket (step, env).

Its arrays live in shared memory: env workers write next observations straight into `obs` (one array
per observation key), and the learner process reads the whole rollout without a copy. `obs[key][T]`
is the bootstrap observation, which also becomes `obs[key][0]` of the next rollout, so consecutive
rollouts are exactly consecutive transitions.

`bootstrap_values[t, i]` holds, for a step that ended its episode by a time limit, the value of the
final observation, computed at collection time by the parameters that collected it: the learner
bootstraps from it instead of from the reset observation stored next.

A policy with memory adds two arrays, kept like the observations (row T becomes row 0 of the next
rollout): `memory[t, i]`, the recurrent state env i carried into step t (not yet reset), and
`episode_starts[t, i]`, whether observation t began an episode (where the state is reset). The learner
replays each env's sequence from `memory[0]` (or from the stored state at the start of each --bptt
chunk), resetting where `episode_starts` says.

A multi-agent run adds `row_active[t, i]`: whether step t of row i is a transition of its agent, False
while the agent has left its env's episode (written by the step itself, from its StepResult). The
learner leaves inactive steps out of the loss and the statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from htsrl_aio.steps import ObsSlot, StepResult

OBS_PREFIX = "obs:"  # storage array names of observation keys: "obs:image", "obs:obs", ...

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


def storage_layout(num_envs: int, rollout_len: int, obs_arrays: Layout, action_shape: tuple[int, ...],
                   action_dtype: np.dtype, state_size: int = 0, agents: bool = False) -> Layout:
    """Name -> (shape, dtype) of every array of one storage; all of them live in shared memory."""
    shape = (rollout_len, num_envs)
    layout: Layout = {OBS_PREFIX + key: ((rollout_len + 1, num_envs, *obs_shape), np.dtype(dtype))
                      for key, (obs_shape, dtype) in obs_arrays.items()}
    layout.update({
        "actions": ((*shape, *action_shape), np.dtype(action_dtype)),
        "logprobs": (shape, np.dtype(np.float32)),
        "values": (shape, np.dtype(np.float32)),
        "rewards": (shape, np.dtype(np.float32)),
        "terminated": (shape, np.dtype(bool)),
        "truncated": (shape, np.dtype(bool)),
        "bootstrap_values": (shape, np.dtype(np.float32)),
    })
    if state_size:
        layout["memory"] = ((rollout_len + 1, num_envs, state_size), np.dtype(np.float32))
        layout["episode_starts"] = ((rollout_len + 1, num_envs), np.dtype(bool))
    if agents:  # only multi-agent envs have rows whose agent can leave the episode
        layout["row_active"] = (shape, np.dtype(bool))
    return layout


class MemorySlot(NamedTuple):
    """The recurrent state a step starts from, as views of the storage, read when inference runs."""

    state: np.ndarray  # (state_size,) the state carried in, before the reset
    start: np.ndarray | bool  # () bool: the observation begins an episode


class RolloutStorage:
    def __init__(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        self.index = index  # which of the two storages; workers and the learner address it by this
        self.arrays = dict(arrays)  # every array by its layout name (checkpoints save them all)
        self.obs = {name[len(OBS_PREFIX):]: a for name, a in arrays.items() if name.startswith(OBS_PREFIX)}
        self.actions = arrays["actions"]  # (T, N, *action_shape); the rest (T, N)
        self.logprobs = arrays["logprobs"]
        self.values = arrays["values"]
        self.rewards = arrays["rewards"]
        self.terminated = arrays["terminated"]
        self.truncated = arrays["truncated"]
        self.bootstrap_values = arrays["bootstrap_values"]
        self.memory = arrays.get("memory")  # (T + 1, N, state_size) with --memory, else None
        self.episode_starts = arrays.get("episode_starts")  # (T + 1, N)
        self.row_active = arrays.get("row_active")  # (T, N) in a multi-agent run, else None
        self.rollout = -1  # index of the rollout held, -1 before the first

    @classmethod
    def zeros(cls, index: int, layout: Layout) -> RolloutStorage:
        """A storage in ordinary memory (for code that needs no other process)."""
        return cls(index, {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout.items()})

    @property
    def rollout_len(self) -> int:
        return self.actions.shape[0]

    def obs_at(self, step: int, env: int) -> ObsSlot:
        """The observation of ticket (rollout, env, step), as views."""
        return {key: array[step, env] for key, array in self.obs.items()}

    def memory_at(self, step: int, env: int) -> MemorySlot | None:
        """The state ticket (rollout, env, step) acts from; None for a memoryless policy."""
        if self.memory is None:
            return None
        return MemorySlot(self.memory[step, env], self.episode_starts[step, env])

    def memory_after(self, step: int, env: int) -> MemorySlot | None:
        """The state after `step`, not reset: what the final observation of a truncation is valued with."""
        if self.memory is None:
            return None
        return MemorySlot(self.memory[step + 1, env], False)

    def start_episode(self, env: int) -> None:
        """Env `env` was reset before step 0 of this rollout: its memory starts empty."""
        if self.memory is not None:
            self.memory[0, env] = 0.0
            self.episode_starts[0, env] = True

    def begin(self, rollout: int) -> None:
        self.rollout = rollout
        self.bootstrap_values.fill(0.0)

    def record_action(self, step: int, env: int, action: np.ndarray, logprob: float, value: float,
                      state: np.ndarray | None = None) -> None:
        self.actions[step, env] = action
        self.logprobs[step, env] = logprob
        self.values[step, env] = value
        if self.memory is not None:
            self.memory[step + 1, env] = state

    def record_step(self, step: int, env: int, result: StepResult) -> bool:
        """Record the step's outcome; True when its bootstrap value must be recorded too."""
        self.rewards[step, env] = result.reward
        if self.row_active is not None:
            self.row_active[step, env] = result.active
        self.terminated[step, env] = result.terminated
        # A step that both terminates and truncates is a termination: nothing to bootstrap from.
        truncated = result.truncated and not result.terminated
        self.truncated[step, env] = truncated
        if self.episode_starts is not None:
            # After a step of an agent that had left, the row's next step may begin its next episode
            # (every row resets with the env): its state starts empty. No loss reads the state carried
            # through absent steps.
            ended = result.terminated or result.truncated or result.restarted is not None or not result.active
            self.episode_starts[step + 1, env] = ended
        return truncated

    def release(self) -> None:
        """Drop every array (the memory behind them is being freed): a later access raises IndexError."""
        empty = {name: np.empty((0,) * array.ndim, array.dtype) for name, array in self.arrays.items()}
        self.__init__(self.index, empty)  # type: ignore[misc]

    def continue_from(self, previous: RolloutStorage) -> None:
        """Start this rollout where `previous` ended: its bootstrap obs is our first obs."""
        for key, array in self.obs.items():
            array[0] = previous.obs[key][-1]
        if self.memory is not None:
            self.memory[0] = previous.memory[-1]
            self.episode_starts[0] = previous.episode_starts[-1]
