"""Legal-action masks: where an env offers one, and how it becomes the observation key `action_mask`.

Envs offer masks three ways, all read (with `--action-mask auto`, the default):

| where the mask is                                    | who does it                          |
| ---------------------------------------------------- | ------------------------------------ |
| an `action_mask` key of a Dict observation           | PettingZoo classic, most custom envs |
| an `action_masks()` method                           | sb3-contrib's MaskablePPO convention |
| `info["action_mask"]` (or `legal_action_mask`) at every step | gymnasium's Taxi, EnvPool's games |

A ParallelEnv's agents offer theirs in their own observations or in `infos[agent]`. The method and
info sources are turned into the observation key by `MaskedObservation` (`MaskedAgentObservations` for
each agent of a ParallelEnv), so from there on a mask is one more
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


def missing_mask(info_key: str, call: str, agent: str | None = None) -> MissingMask:
    whose = "an info" if agent is None else f"agent {agent!r} an info"
    return MissingMask(f"the env's {call} returned {whose} without {info_key!r}, which other infos carry as "
                       "its action mask; return the mask in every info (reset()'s too), or pass "
                       "--action-mask off to ignore it")


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
        self.observation_space = with_mask_space(env.observation_space, size)

    def _mask(self, info: Any, call: str) -> Any:
        if self._method is not None:
            return _as_bits(self._method())
        if not isinstance(info, dict) or self.info_key not in info:
            raise missing_mask(str(self.info_key), call)
        return _as_bits(info[self.info_key])

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return with_mask(obs, self._mask(info, "reset()")), info

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return with_mask(obs, self._mask(info, "step()")), reward, terminated, truncated, info


class MaskedAgentObservations:
    """A PettingZoo ParallelEnv whose agents' masks come from `infos[agent][info_key]`, with each agent's
    mask as the `action_mask` key of its observation (what `MaskedObservation` does for one env).
    Everything else (`agents`, `possible_agents`, `state()`, `render()`, ...) is the env's own."""

    def __init__(self, env: Any, size: int, info_key: str) -> None:
        self.env = env
        self.info_key = info_key
        self._size = size
        self._spaces: dict[str, gym.spaces.Dict] = {}  # one object per agent, as PettingZoo asks

    def observation_space(self, agent: str) -> gym.spaces.Dict:
        if agent not in self._spaces:
            self._spaces[agent] = with_mask_space(self.env.observation_space(agent), self._size)
        return self._spaces[agent]

    def action_space(self, agent: str) -> gym.Space:
        return self.env.action_space(agent)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._masked(obs, infos, "reset()"), infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        return self._masked(obs, infos, "step()"), rewards, terminations, truncations, infos

    def _masked(self, obs: dict[str, Any], infos: Any, call: str) -> dict[str, Any]:
        masked = {}
        for agent, agent_obs in obs.items():
            info = infos.get(agent) if isinstance(infos, dict) else None
            if not isinstance(info, dict) or self.info_key not in info:
                raise missing_mask(self.info_key, call, agent)
            masked[agent] = with_mask(agent_obs, _as_bits(info[self.info_key]))
        return masked

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "env":  # not yet set while unpickling
            raise AttributeError(name)
        return getattr(self.env, name)


def with_mask_space(space: gym.Space, size: int) -> gym.spaces.Dict:
    """`space` with a MultiBinary(`size`) mask as its `action_mask` key (beside `obs` if not a Dict)."""
    mask_space = gym.spaces.MultiBinary(size)
    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({**space.spaces, ACTION_MASK_KEY: mask_space})
    return gym.spaces.Dict({OBS_KEY: space, ACTION_MASK_KEY: mask_space})


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
