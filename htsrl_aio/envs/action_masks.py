"""Legal-action masks: where an env offers one, and how it becomes the observation key `action_mask`.

Envs offer masks three ways, all read (with `--action-mask auto`, the default):

| where the mask is                                    | who does it                          |
| ---------------------------------------------------- | ------------------------------------ |
| an `action_mask` key of a Dict observation           | PettingZoo classic, most custom envs |
| an `action_masks()` method                           | sb3-contrib's MaskablePPO convention |
| `info["action_mask"]` (or `legal_action_mask`) at every step | gymnasium's Taxi, EnvPool's games |

The last two are turned into the first by `MaskedObservation`, so from there on a mask is one more
observation key: stored per step, carried by tickets and inference blocks, checkpointed, exported, with
no path of its own. The model keeps it away from its encoder and applies it to the logits
(models/actor_critic.py), so sampling, log-probabilities, entropy, eval, `Trainer.act` and exported
policies all see the same masked distribution. How its values are checked is spaces.ObsField's.

Numpy and gymnasium only: env worker processes import this module, never torch.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

ACTION_MASK_KEY = "action_mask"
MASK_INFO_KEYS = ("action_mask", "legal_action_mask")  # Taxi and other toy-text envs; EnvPool's games
OBS_KEY = "obs"  # the env's own observation beside the mask, when it is not a Dict
MaskMode = Literal["auto", "off"]


class MissingMask(ValueError):
    """An env that offered a mask in its infos returned an info without it."""


def has_mask_key(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Dict) and ACTION_MASK_KEY in space.spaces


def mask_method(env: Any) -> Any:
    """The env's sb3-contrib `action_masks()` method (on the env or, under wrappers, the unwrapped env),
    or None."""
    for holder in (env, getattr(env, "unwrapped", None)):
        method = getattr(holder, "action_masks", None)
        if callable(method):
            return method
    return None


def info_mask_key(info: Any) -> str | None:
    """The key of `info` that holds an action mask, or None."""
    return next((key for key in MASK_INFO_KEYS if isinstance(info, dict) and key in info), None)


def with_mask(obs: Any, mask: Any) -> dict[str, Any]:
    """`obs` with `mask` as its `action_mask` key, as `MaskedObservation` returns it."""
    if isinstance(obs, dict):
        return {**obs, ACTION_MASK_KEY: mask}
    return {OBS_KEY: obs, ACTION_MASK_KEY: mask}


class MaskedObservation(gym.Wrapper):
    """A gymnasium env whose mask comes from `action_masks()` (`info_key` None) or from `info[info_key]`,
    with the mask as the observation key `action_mask`: a MultiBinary of one bit per action (the
    concatenated choices of a MultiDiscrete, as sb3-contrib has it)."""

    def __init__(self, env: gym.Env, size: int, info_key: str | None = None) -> None:
        super().__init__(env)
        self.info_key = info_key
        self._method = None if info_key is not None else mask_method(env)
        mask_space = gym.spaces.MultiBinary(size)
        space = env.observation_space
        self.observation_space = (gym.spaces.Dict({**space.spaces, ACTION_MASK_KEY: mask_space})
                                  if isinstance(space, gym.spaces.Dict)
                                  else gym.spaces.Dict({OBS_KEY: space, ACTION_MASK_KEY: mask_space}))

    def _mask(self, info: Any, call: str) -> Any:
        if self._method is not None:
            return _as_bits(self._method())
        if not isinstance(info, dict) or self.info_key not in info:
            raise MissingMask(f"the env's {call} returned an info without {self.info_key!r}, which other "
                              "infos carry as its action mask; return the mask in every info (reset()'s "
                              "too), or pass --action-mask off to ignore it")
        return _as_bits(info[self.info_key])

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return with_mask(obs, self._mask(info, "reset()")), info

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return with_mask(obs, self._mask(info, "step()")), reward, terminated, truncated, info


def _as_bits(mask: Any) -> Any:
    """A mask of booleans or 0/1 integers as the int8 bits of the MultiBinary it is declared as; other
    values as they are, for the layout to refuse in its sentence."""
    array = np.asarray(mask)
    if array.dtype.kind in "biu" and bool(np.isin(array, (0, 1)).all()):
        return array.astype(np.int8)
    return array


def mask_field_space(space: gym.Space, key: str, sizes: tuple[int, ...]) -> str | None:
    """Why `space` (an observation's `action_mask` leaf) cannot mask actions of `sizes` categories per
    choice, or None when it can: a MultiBinary or a 0/1 Box of one entry per action."""
    total = sum(sizes)
    shape = tuple(np.atleast_1d(space.n).tolist()) if isinstance(space, gym.spaces.MultiBinary) else \
        getattr(space, "shape", None)
    box01 = isinstance(space, gym.spaces.Box) and bool(np.all(space.low >= 0) and np.all(space.high <= 1))
    if (isinstance(space, gym.spaces.MultiBinary) or box01) and shape == (total,):
        return None
    return (f"observation_space[{key!r}] is {space}, which cannot mask {total} actions: an action mask is a "
            f"MultiBinary({total}) or a 0/1 Box of shape ({total},), one entry per action; fix the space, or "
            "pass --action-mask off to read it as an ordinary observation")
