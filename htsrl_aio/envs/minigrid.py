"""MiniGrid's view as categories, so a policy can tell its objects apart.

MiniGrid's `image` is a `Box(0, 255, (7, 7, 3), uint8)` whose numbers are codes, not intensities: for
each cell of the agent's view an object (wall 2, key 5, ball 6, ...), a colour and a state. Read as the
bytes of a picture, as every `Box(0, 255, uint8)` is (`ObsField.scale` 1/255), a key and a ball differ by
0.004 in one input, and MiniGrid-MemoryS7's cue (a key or a ball) stays out of a policy's reach
(docs/learning.md). `categories` gives the view as a `MultiDiscrete` of those codes instead, which
`ObsLayout` stores one-hot: 20 bits per cell, one per object, colour and state, as MiniGrid's own
`OneHotPartialObsWrapper` encodes it. `--env htsrl_aio.envs.minigrid:categories --env-kwargs
id=MiniGrid-MemoryS7-v0` trains one.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401 (registers the MiniGrid-... ids)
import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

IMAGE_KEY = "image"
# The categories of a cell's three codes, in the order MiniGrid writes them.
CELL_CATEGORIES = (len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX))


class CategoricalView(gym.ObservationWrapper):
    """A MiniGrid env whose `image` is a flat `MultiDiscrete` of its cells' object, colour and state codes
    (row by row, as `image.reshape(-1)`); the other keys (direction, mission) are left as they are."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        image = space[IMAGE_KEY] if isinstance(space, gym.spaces.Dict) and IMAGE_KEY in space.spaces else None
        if not isinstance(image, gym.spaces.Box) or len(image.shape) != 3 or image.shape[-1] != 3:
            name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
            # No full stop: the message that reports a failed env creation ends the sentence.
            raise ValueError(f"htsrl_aio.envs.minigrid.categories reads MiniGrid envs, whose observation is "
                             f"a Dict with an (H, W, 3) 'image' of codes, and {name} observes a "
                             f"{type(space).__name__}; name a MiniGrid-... or BabyAI-... id")
        cells = image.shape[0] * image.shape[1]
        self.observation_space = gym.spaces.Dict(
            {**space.spaces, IMAGE_KEY: gym.spaces.MultiDiscrete(np.tile(CELL_CATEGORIES, cells))})

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, IMAGE_KEY: observation[IMAGE_KEY].reshape(-1).astype(np.int64)}


def categories(id: str = "MiniGrid-MemoryS7-v0", **kwargs: Any) -> gym.Env:
    """MiniGrid env `id` with its view as categories (`CategoricalView`); `kwargs` go to gymnasium.make."""
    return CategoricalView(gym.make(id, **kwargs))
