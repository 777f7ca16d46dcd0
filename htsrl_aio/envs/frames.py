"""Frame options (`--frame-size`, `--grayscale`, `--frame-stack`) for envs without a C++ engine.

They apply to every image leaf of the observation (uint8, height x width x channels), alone or inside a
Dict or Tuple, so an env that gives a screen beside a vector (ViZDoom's screen and game variables) can be
shrunk; the other leaves pass unchanged. Gray frames are computed as gymnasium's GrayscaleObservation
computes them (3-channel leaves; others are left as they are), resizing is OpenCV's INTER_AREA as in
ResizeObservation, and a stack puts the frames on a new first axis with an episode's first frame
repeated, as FrameStackObservation does: an image env gives the bits it gave with those wrappers.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from htsrl_aio.errors import ConfigError

GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])  # gymnasium's GrayscaleObservation
OPENCV_HINT = '--frame-size needs OpenCV; install it with `pip install "htsrl-aio[frames]"`'

LeafPath = tuple[Hashable, ...]  # Dict keys and Tuple indices from the top of the observation


@dataclass(frozen=True)
class FrameOptions:
    """Image preprocessing for envs without their own (`--frame-size`, `--grayscale`, `--frame-stack`)."""

    size: tuple[int, int] | None = None
    grayscale: bool = False
    stack: int = 1

    def require_opencv(self) -> None:
        """Raise ConfigError (one sentence, with the extra to install) where resizing lacks OpenCV."""
        if self.size is not None and importlib.util.find_spec("cv2") is None:
            raise ConfigError(f"{OPENCV_HINT}.")

    def wrap(self, env: gym.Env) -> gym.Env:
        return FramesObservation(env, self)


def is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def map_images(value: Any, space: gym.Space, fn: Callable[[LeafPath, Any], Any], path: LeafPath = ()) -> Any:
    """`value` (the space itself, or one of its observations) with `fn(path, leaf)` applied to its image
    leaves."""
    is_space = isinstance(value, gym.spaces.Space)
    if isinstance(space, gym.spaces.Dict):
        items = {key: map_images(value[key], sub, fn, (*path, key)) for key, sub in space.spaces.items()}
        return gym.spaces.Dict(items) if is_space else items
    if isinstance(space, gym.spaces.Tuple):
        parts = tuple(map_images(value[i], sub, fn, (*path, i)) for i, sub in enumerate(space.spaces))
        return gym.spaces.Tuple(parts) if is_space else parts
    return fn(path, value) if is_image(space) else value


class _LeafFrames:
    """One image leaf's frames: gray, resized, stacked."""

    def __init__(self, space: gym.spaces.Box, options: FrameOptions) -> None:
        height, width, channels = space.shape
        self.gray = options.grayscale and channels == 3
        # As GrayscaleObservation(keep_dim=stack == 1): a stack of gray frames has no channel axis.
        self.keep_dim = options.stack == 1
        channel_axis = (1,) if self.gray and self.keep_dim else () if self.gray else (channels,)
        self.size = options.size
        self.frame_shape = (*(options.size or (height, width)), *channel_axis)
        self.stack = options.stack
        shape = self.frame_shape if self.stack == 1 else (self.stack, *self.frame_shape)
        self.space = gym.spaces.Box(0, 255, shape, np.uint8)
        self._frames: deque[np.ndarray] = deque(maxlen=self.stack)
        if self.size is not None:
            try:
                import cv2
            except ImportError as exc:
                raise ImportError(f"{OPENCV_HINT} ({exc}).") from None
            self._cv2 = cv2

    def frame(self, obs: np.ndarray) -> np.ndarray:
        if self.gray:
            obs = np.sum(np.multiply(obs, GRAY_WEIGHTS), axis=-1).astype(np.uint8)
            if self.keep_dim:
                obs = np.expand_dims(obs, -1)
        if self.size is not None:
            obs = self._cv2.resize(obs, self.size[::-1], interpolation=self._cv2.INTER_AREA)
        return np.asarray(obs).reshape(self.frame_shape)

    def observe(self, obs: np.ndarray, first: bool) -> np.ndarray:
        frame = self.frame(obs)
        if self.stack == 1:
            return frame
        if first:
            self._frames.extend([frame] * self.stack)
        self._frames.append(frame)
        return np.stack(self._frames)


class FramesObservation(gym.Wrapper):
    """The frame options applied to every image leaf of an env's observations."""

    def __init__(self, env: gym.Env, options: FrameOptions) -> None:
        super().__init__(env)
        space = env.observation_space
        self._leaves: dict[LeafPath, _LeafFrames] = {}

        def add_leaf(path: LeafPath, leaf: gym.spaces.Box) -> gym.spaces.Box:
            self._leaves[path] = _LeafFrames(leaf, options)
            return self._leaves[path].space

        self.observation_space = map_images(space, space, add_leaf)
        if not self._leaves:
            raise ValueError(f"--frame-size, --grayscale and --frame-stack need uint8 images (height, width, "
                             f"channels), alone or in a Dict or Tuple observation, but this env's "
                             f"observation_space is {space}")

    def _observe(self, obs: Any, first: bool) -> Any:
        return map_images(obs, self.env.observation_space,
                          lambda path, leaf: self._leaves[path].observe(leaf, first))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observe(obs, first=True), info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs, first=False), reward, terminated, truncated, info
