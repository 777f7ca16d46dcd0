"""Spaces as the runtime stores them: observation keys, action rows, and what is refused."""

import gymnasium as gym
import numpy as np
import pytest

from htsrl_aio.envs.spaces import SINGLE_KEY, ActionSpec, ObsLayout, UnsupportedSpace


def test_a_box_is_one_key_and_float64_is_stored_as_float32():
    layout = ObsLayout.from_space(gym.spaces.Box(-1, 1, (3,), np.float64))
    assert layout.arrays() == {SINGLE_KEY: ((3,), np.dtype(np.float32))}
    assert layout.encode(np.array([0.5, -0.25, 1.0]))[SINGLE_KEY].tolist() == [0.5, -0.25, 1.0]


def test_dict_and_tuple_leaves_become_keys_with_images_channels_first_and_one_hot_discretes():
    space = gym.spaces.Dict({
        "pixels": gym.spaces.Box(0, 255, (40, 30, 3), np.uint8),
        "gray": gym.spaces.Box(0, 255, (10, 12), np.uint8),
        "goal": gym.spaces.Tuple((gym.spaces.Discrete(3, start=1), gym.spaces.MultiDiscrete([2, 3]))),
        "mission": gym.spaces.Text(20),
    })
    layout = ObsLayout.from_space(space)
    assert layout.arrays() == {
        "pixels": ((3, 40, 30), np.dtype(np.uint8)), "gray": ((1, 10, 12), np.dtype(np.uint8)),
        "goal.0": ((3,), np.dtype(np.float32)), "goal.1": ((5,), np.dtype(np.float32))}
    assert layout.dropped == ("mission",)
    assert {f.key: f.image for f in layout.fields} == {"pixels": True, "gray": True, "goal.0": False,
                                                       "goal.1": False}
    pixels = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
    obs = {"pixels": pixels, "gray": np.zeros((10, 12), np.uint8), "goal": (3, np.array([1, 0])),
           "mission": "go to the door"}
    encoded = layout.encode(obs)
    np.testing.assert_array_equal(encoded["pixels"][2], pixels[:, :, 2])
    assert encoded["goal.0"].tolist() == [0, 0, 1]  # value 3 of Discrete(3, start=1)
    assert encoded["goal.1"].tolist() == [0, 1, 1, 0, 0]


def test_a_wrong_leaf_shape_names_the_key():
    layout = ObsLayout.from_space(gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (4,))}))
    with pytest.raises(ValueError, match=r"step\(\) returned observation\['x'\] of shape \(5,\) but its "
                                         r"observation_space says \(4,\)"):
        layout.encode({"x": np.zeros(5)}, "step()")


@pytest.mark.parametrize("space,match", [
    (gym.spaces.Sequence(gym.spaces.Discrete(2)), r"observation_space is Sequence"),
    (gym.spaces.Dict({"ok": gym.spaces.Discrete(2), "bad": gym.spaces.Graph(gym.spaces.Discrete(2), None)}),
     r"observation_space\['bad'\] is Graph"),
])
def test_unsupported_observation_spaces_are_one_sentence(space, match):
    with pytest.raises(UnsupportedSpace, match=match):
        ObsLayout.from_space(space)


def test_actions_reach_the_env_in_its_own_terms():
    assert ActionSpec.from_space(gym.spaces.Discrete(4, start=-2)).to_env(np.array(3)) == 1
    multi = ActionSpec.from_space(gym.spaces.MultiDiscrete([3, 2], start=[-1, 0]))
    assert multi.shape == (2,) and multi.to_env(np.array([2, 1])).tolist() == [1, 1]
    bits = ActionSpec.from_space(gym.spaces.MultiBinary([2, 2]))
    assert bits.shape == (4,) and bits.to_env(np.array([1, 0, 0, 1])).tolist() == [[1, 0], [0, 1]]
    box = ActionSpec.from_space(gym.spaces.Box(-1.0, 2.0, (2,), np.float64))
    sent = box.to_env(np.array([-5.0, 1.5], np.float32))  # only the env's copy is clipped
    assert sent.tolist() == [-1.0, 1.5] and sent.dtype == np.float64


def test_unsupported_action_spaces_are_one_sentence():
    for space in (gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), gym.spaces.Box(0, 3, (2,), np.int64)):
        with pytest.raises(UnsupportedSpace, match=r"^action_space is .*; htsrl-aio samples Discrete"):
            ActionSpec.from_space(space)
