"""Frame options (--frame-size, --grayscale, --frame-stack) on gymnasium envs: every image leaf of a Dict
or Tuple observation, the same bits as gymnasium's wrappers on a plain image env, and OpenCV named when
missing."""

import functools
import importlib.util

import gymnasium as gym
import numpy as np
import pytest
from envs_for_tests import pixel_cartpole, screen_and_vars

from htsrl_aio import ConfigError, TrainConfig
from htsrl_aio.envs import resolve_env


def frames_env(env, **flags):
    return resolve_env(env, TrainConfig(**flags))()


@pytest.mark.parametrize("tuple_obs", [False, True])
def test_gray_and_stack_apply_to_the_image_leaf_of_a_dict_or_tuple(tuple_obs):
    env = frames_env(functools.partial(screen_and_vars, tuple_obs=tuple_obs), grayscale=True, frame_stack=3)
    screen, variables = (0, 1) if tuple_obs else ("screen", "vars")
    space = env.observation_space
    assert space[screen] == gym.spaces.Box(0, 255, (3, 12, 16), np.uint8)
    assert space[variables] == gym.spaces.Box(-1, 1, (2,), np.float32)  # other leaves pass unchanged
    first, _ = env.reset(seed=0)
    obs = env.step(0)[0]
    for o in (first, obs):
        assert o[screen] in space[screen] and np.array_equal(o[variables], [0.5, -0.5])
    assert np.array_equal(obs[screen][0], first[screen][0])
    assert np.array_equal(obs[screen][1], first[screen][2])
    assert not np.array_equal(obs[screen][2], obs[screen][1])  # the newest frame comes last


def test_resize_applies_to_the_image_leaf_of_a_dict():
    pytest.importorskip("cv2")
    env = frames_env("envs_for_tests:screen_and_vars", frame_size=(6, 8))
    assert env.observation_space["screen"] == gym.spaces.Box(0, 255, (6, 8, 3), np.uint8)
    assert env.reset(seed=0)[0]["screen"].shape == (6, 8, 3)


@pytest.mark.parametrize("resize", [False, True])
def test_a_plain_image_env_gives_the_bits_of_gymnasiums_wrappers(resize):
    if resize:
        pytest.importorskip("cv2")
    size = (24, 32) if resize else None
    ours = frames_env("envs_for_tests:pixel_cartpole", frame_size=size, grayscale=True, frame_stack=2)
    theirs = gym.wrappers.GrayscaleObservation(pixel_cartpole(), keep_dim=False)
    if resize:
        theirs = gym.wrappers.ResizeObservation(theirs, size)
    theirs = gym.wrappers.FrameStackObservation(theirs, 2)
    assert ours.observation_space == theirs.observation_space
    a, b = ours.reset(seed=3)[0], theirs.reset(seed=3)[0]
    assert np.array_equal(a, b)
    for action in (0, 1, 1, 0):
        assert np.array_equal(ours.step(action)[0], theirs.step(action)[0])


def test_frame_size_without_opencv_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "cv2" else real(name, *args))
    with pytest.raises(ConfigError, match=r'^--frame-size needs OpenCV; install it with `pip install '
                                          r'"htsrl-aio\[frames\]"`\.$'):
        resolve_env("envs_for_tests:screen_and_vars", TrainConfig(frame_size=(6, 8)))
