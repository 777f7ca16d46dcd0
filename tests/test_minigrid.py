"""MiniGrid's view as categories (htsrl_aio.envs.minigrid): each object gets bits of its own."""

import numpy as np
import pytest
from minigrid.core.constants import OBJECT_TO_IDX

from htsrl_aio.config import TrainConfig
from htsrl_aio.envs.check import check_env
from htsrl_aio.envs.factory import resolve_env
from htsrl_aio.envs.minigrid import CELL_CATEGORIES, categories
from htsrl_aio.envs.spaces import ObsLayout

MEMORY = "MiniGrid-MemoryS7-v0"


def model_input(layout: ObsLayout, obs: dict) -> np.ndarray:
    """The view as the model reads it: stored, then multiplied by its field's scale."""
    field = next(f for f in layout.fields if f.key == "image")
    return layout.encode(obs)["image"].astype(np.float32) * field.scale


def test_the_memory_cue_key_and_ball_are_one_bit_each_not_codes_read_as_bytes():
    # Seed 0 shows a key and a ball in the cell ahead of the agent, at view columns 1 and 5.
    plain = resolve_env(MEMORY)()
    plain_obs, _ = plain.reset(seed=0)
    assert (plain_obs["image"][1, 5, 0], plain_obs["image"][5, 5, 0]) == (OBJECT_TO_IDX["key"],
                                                                         OBJECT_TO_IDX["ball"])
    as_bytes = model_input(ObsLayout.from_space(plain.observation_space), plain_obs)
    assert abs(as_bytes[0, 1, 5] - as_bytes[0, 5, 5]) < 0.005  # why categories exist: 1/255 apart

    env = resolve_env("htsrl_aio.envs.minigrid:categories", TrainConfig(env_kwargs={"id": MEMORY}))()
    obs, _ = env.reset(seed=0)
    layout = ObsLayout.from_space(env.observation_space)
    bits = model_input(layout, obs).reshape(7, 7, sum(CELL_CATEGORIES))  # cell (column, row), its 20 bits
    key, ball = bits[1, 5], bits[5, 5]
    assert key[OBJECT_TO_IDX["key"]] == ball[OBJECT_TO_IDX["ball"]] == 1.0
    assert key.sum() == ball.sum() == 3.0  # one object, one colour, one state
    assert np.abs(key - ball).sum() == 2.0
    assert layout.describe() == "direction (4,) float32 + image (980,) float32 (left out: mission)"
    plain.close()
    env.close()


def test_categories_refuses_an_env_without_minigrids_code_image():
    with pytest.raises(ValueError, match="and CartPole-v1 observes a Box; name a MiniGrid-"):
        categories("CartPole-v1")


async def test_check_env_points_a_minigrid_id_at_categories_and_is_quiet_once_it_is_used():
    plain = await check_env(resolve_env(MEMORY), steps=5)
    assert plain.ok, plain.problems
    assert [n for n in plain.notes if "MiniGrid's 'image' holds object, colour and state codes" in n] == [
        "MiniGrid's 'image' holds object, colour and state codes, which runs read as bytes (x 1/255: a key "
        "and a ball differ by 0.004); --env htsrl_aio.envs.minigrid:categories --env-kwargs "
        f"id={MEMORY} gives each code a bit of its own (MiniGrid-MemoryS7 is solved with it and not without, "
        "docs/learning.md)."]
    as_categories = await check_env(resolve_env("htsrl_aio.envs.minigrid:categories",
                                                TrainConfig(env_kwargs={"id": MEMORY})), steps=5)
    assert as_categories.ok, as_categories.problems
    assert as_categories.notes == []
