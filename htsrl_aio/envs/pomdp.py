"""Partially observable versions of gymnasium's classic tasks, for policies with memory (--memory).

`no_velocity` drops the velocities from the observation, as the SB3 zoo's CartPoleNoVel-v1 and
PendulumNoVel-v1 (which sb3-contrib's RecurrentPPO is benchmarked on) and POPGym's "stateless" tasks
do: one observation then shows where things are but not where they are going, so a memoryless policy
cannot balance the pole, and a recurrent one can. Importing this module registers them under the zoo's
names, so `--env htsrl_aio.envs.pomdp:CartPoleNoVel-v1` trains one (also PendulumNoVel-v1 and
LunarLanderNoVel-v3).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

# The observation entries that are positions (kept); the others are velocities (dropped).
POSITIONS: dict[str, tuple[int, ...]] = {
    "CartPole-v1": (0, 2),  # cart position, pole angle
    "Pendulum-v1": (0, 1),  # cos and sin of the angle
    "LunarLander-v3": (0, 1, 4, 6, 7),  # x, y, angle, leg contacts
}
NO_VELOCITY_IDS = {"CartPoleNoVel-v1": "CartPole-v1", "PendulumNoVel-v1": "Pendulum-v1",
                   "LunarLanderNoVel-v3": "LunarLander-v3"}


class KeepEntries(gym.ObservationWrapper):
    """Keep only the given entries of a 1-D Box observation."""

    def __init__(self, env: gym.Env, keep: tuple[int, ...]) -> None:
        super().__init__(env)
        self.keep = np.array(keep)
        space = env.observation_space
        assert isinstance(space, gym.spaces.Box) and len(space.shape) == 1
        self.observation_space = gym.spaces.Box(space.low[self.keep], space.high[self.keep],
                                                dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.keep]


def no_velocity(id: str = "CartPole-v1", **kwargs: Any) -> gym.Env:
    """`id` with its velocities hidden (one of POSITIONS' ids); `kwargs` go to gymnasium.make."""
    if id not in POSITIONS:
        raise ValueError(f"no_velocity knows {', '.join(POSITIONS)}, not {id!r}")
    return KeepEntries(gym.make(id, **kwargs), POSITIONS[id])


for _name, _full in NO_VELOCITY_IDS.items():
    if _name not in gym.registry:
        gym.register(_name, entry_point=no_velocity, kwargs={"id": _full})
