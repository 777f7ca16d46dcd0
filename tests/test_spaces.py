"""Spaces as the runtime stores them: observation keys, action rows, and what is refused."""

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from htsrl_aio.config import TrainConfig
from htsrl_aio.envs.factory import EnvSpec
from htsrl_aio.envs.spaces import SINGLE_KEY, ActionSpec, BadObservation, ObsLayout, UnsupportedSpace
from htsrl_aio.models.build import build_model
from htsrl_aio.models.cnn import FEATURES


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


@pytest.mark.parametrize("space,obs,match", [
    (gym.spaces.MultiDiscrete([3, 3]), np.array([5, 0]),
     r"holding 5 at index 0, outside its categories 0\.\.2"),
    (gym.spaces.MultiDiscrete([3, 3], start=[1, 1]), np.array([1, 0]),
     r"holding 0 at index 1, outside its categories 1\.\.3"),
    (gym.spaces.Discrete(5), -2, r"holding -2, outside its categories 0\.\.4"),
    (gym.spaces.Discrete(5), 2.0, r"holding 2\.0, a float64 where its observation_space says int64"),
    (gym.spaces.MultiBinary(4), np.array([7, -3, 1, 0], np.int8),
     r"holding 7 at index 0, which is not 0 or 1"),
    (gym.spaces.Box(0, 255, (8, 6, 3), np.uint8), np.full((8, 6, 3), 0.5, np.float32),
     r"holding 0\.5 at index \(0, 0, 0\), a float32 where its observation_space says uint8, which storing "
     r"would cut to a whole number; return uint8 values \(scale a \[0, 1\] float image by 255 first\)$"),
    (gym.spaces.Box(0, 255, (8, 6, 3), np.uint8), np.full((8, 6, 3), 765, np.int64),
     r"holding 765 at index \(0, 0, 0\), which does not fit its uint8 storage \(0\.\.255\) and would wrap"),
    (gym.spaces.Box(-5, 5, (2,), np.int8), np.array([3, -200], np.int32),
     r"holding -200 at index 1, which does not fit its int8 storage \(-128\.\.127\)"),
])
def test_values_storing_would_change_are_one_sentence_naming_key_value_and_step(space, obs, match):
    layout = ObsLayout.from_space(gym.spaces.Dict({"x": space}))
    with pytest.raises(BadObservation) as raised:
        layout.encode({"x": obs}, "step()")
    message = str(raised.value.at("step 3 of episode 0"))
    assert message.startswith("step() returned observation['x'] at step 3 of episode 0 holding ")
    assert re.search(match, message), message


def test_values_a_space_holds_are_stored_as_before():
    layout = ObsLayout.from_space(gym.spaces.Tuple((
        gym.spaces.MultiDiscrete([3, 3], start=[-1, 0]), gym.spaces.MultiBinary(3),
        gym.spaces.Box(0, 255, (8, 6, 3), np.uint8), gym.spaces.Box(-5, 5, (2,), np.int8))))
    frame = np.full((8, 6, 3), 255, np.int64)  # another integer dtype, every value of which fits
    encoded = layout.encode((np.array([-1, 2]), np.array([True, False, True]), frame, np.array([-128, 127])))
    assert encoded["0"].tolist() == [1, 0, 0, 0, 0, 1] and encoded["1"].tolist() == [1, 0, 1]
    assert (encoded["2"] == 255).all() and encoded["3"].tolist() == [-128, 127]


class SmallImageEnv(gym.Env):
    """A Dict observation: a small 8x8x3 uint8 image (too small for the CNN) beside a state vector, and
    a 36x36 frame the CNN reads."""

    observation_space = gym.spaces.Dict({
        "image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        "state": gym.spaces.Box(-1, 1, (2,), np.float32),
        "frame": gym.spaces.Box(0, 255, (36, 36, 3), np.uint8),
    })
    action_space = gym.spaces.Discrete(2)

    def observation(self) -> dict[str, np.ndarray]:
        image = np.zeros((8, 8, 3), np.uint8)
        image[::2] = 255
        return {"image": image, "state": np.array([-1.0, 0.5], np.float32),
                "frame": np.full((36, 36, 3), 255, np.uint8)}


@pytest.mark.parametrize("normalize_obs", [False, True])
def test_bytes_reach_the_network_divided_by_255_once_in_every_encoder_path(normalize_obs):
    """Before, the 8x8 image went into the MLP as raw 0-255 numbers (and into --normalize-obs's
    statistics so), while the CNN read its frames in [0, 1]."""
    env = SmallImageEnv()
    spec = EnvSpec.from_spaces(env.observation_space, env.action_space)
    assert {f.key: f.scale for f in spec.obs.fields} == {"image": 1 / 255, "state": 1.0, "frame": 1 / 255}
    model = build_model(spec, TrainConfig(env="CartPole-v1", normalize_obs=normalize_obs).resolved())
    encoder = model.encoder
    assert encoder.cnn_keys == ("frame",) and encoder.flat_keys == ("image", "state")
    obs = {key: torch.from_numpy(array[None]) for key, array in spec.obs.encode(env.observation()).items()}
    cnn_inputs = []
    encoder.cnns["frame"].trunk.register_forward_pre_hook(lambda _, args: cnn_inputs.append(args[0]))
    encoder.update_stats(obs)
    features = encoder(obs)
    if normalize_obs:  # the statistics saw the bytes in [0, 1] too (their prior count is 1e-4)
        mean = encoder.stats["image"].mean
        assert mean.min() == 0.0 and mean.max() == pytest.approx(1.0, rel=1e-3)
    else:
        image = features[0, FEATURES:FEATURES + 8 * 8 * 3]
        assert image.min() == 0.0 and image.max() == 1.0
        assert features[0, FEATURES + 8 * 8 * 3:].tolist() == [-1.0, 0.5]  # a float Box as it is
    assert cnn_inputs[0].max() == 1.0  # divided by 255 once, by the CNN itself
