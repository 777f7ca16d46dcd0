"""Observation and action spaces as the runtime stores them: named arrays and flat action rows.

Every observation, whatever its space, becomes a dict of arrays with fixed keys, shapes and dtypes
(`ObsLayout`): a plain `Box` is the one key "obs"; `Dict` and `Tuple` spaces become one key per leaf
("image", "direction", "0", "goal.position"); uint8 images stored channels-first; `Discrete` and
`MultiDiscrete` leaves one-hot; `Text` leaves (MiniGrid's mission) are dropped. Storage, inference,
the learner and the model all speak these keys.

Every action becomes a row of fixed shape and dtype (`ActionSpec`): an int64 scalar for `Discrete`,
int64 vectors for `MultiDiscrete`/`MultiBinary`, a float32 vector for `Box`. The row is what is
sampled, stored and learned from; `ActionSpec.to_env` turns it into what `env.step` takes (adding a
`Discrete` start, clipping a `Box` sample to its bounds) right before the step.

Numpy only: env worker processes import this module, never torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from htsrl_aio.envs.action_masks import ACTION_MASK_KEY, mask_field_space

SINGLE_KEY = "obs"  # the key of an observation that is not a Dict or Tuple
SUPPORTED_OBS = "Box, Discrete, MultiDiscrete, MultiBinary, or Dict/Tuple of those"
SUPPORTED_ACTIONS = "Discrete, MultiDiscrete, MultiBinary or Box"


class UnsupportedSpace(ValueError):
    """A space the runtime cannot store or sample; the message says which and what to do."""


class EnvOutputError(ValueError):
    """Something an env returned that the run refuses, in one sentence naming it and the fix.

    `at` adds where in the env's life it happened, which only the replica knows (the first place given
    wins); subclasses say the sentence.
    """

    def __init__(self, where: str, at: str = "") -> None:
        self.where, self.place = where, at
        super().__init__(self.sentence(f" at {at}" if at else ""))

    def sentence(self, place: str) -> str:
        raise NotImplementedError

    def at(self, place: str) -> EnvOutputError:
        """The same problem, saying where in the env's life it happened."""
        if not self.place:
            self.place = place
            self.args = (self.sentence(f" at {place}"),)
        return self


class NonFinite(EnvOutputError):
    """An env returned NaN or Inf, which would poison every update that learns from it."""

    def __init__(self, where: str, what: str, at: str = "") -> None:
        self.what = what
        super().__init__(where, at)

    def sentence(self, place: str) -> str:
        return (f"{self.where} returned a non-finite {self.what}{place}; make the env return finite numbers "
                "(look for a division by zero or a diverging simulation) or end the episode before they "
                "appear")


class BadObservation(EnvOutputError):
    """An observation value its space cannot hold, which storing would silently change: a category out
    of range (a one-hot of another category), a MultiBinary value other than 0/1, an integer that would
    wrap around, a float cut to a whole number."""

    def __init__(self, where: str, what: str, problem: str, fix: str, at: str = "") -> None:
        self.what, self.problem, self.fix = what, problem, fix
        super().__init__(where, at)

    def sentence(self, place: str) -> str:
        return f"{self.where} returned {self.what}{place} holding {self.problem}; {self.fix}"


Transform = Literal["none", "hwc", "stack_hwc", "channel", "one_hot", "mask"]


@dataclass(frozen=True)
class ObsField:
    """One leaf of the observation: where it sits in the env's obs and how it is stored."""

    key: str
    path: tuple[str | int, ...]  # indices into the env's (nested) observation
    raw_shape: tuple[int, ...]  # as the env returns it
    shape: tuple[int, ...]  # as stored
    dtype: np.dtype  # as stored
    raw_dtype: np.dtype  # as the observation_space says
    transform: Transform = "none"
    sizes: tuple[int, ...] = ()  # one_hot: the category count of each entry; mask: of each action choice
    starts: tuple[int, ...] = ()  # one_hot: the lowest value of each entry
    binary: bool = False  # MultiBinary: every value is 0 or 1
    # What the model multiplies stored values by before anything else reads them: 1/255 for the bytes of
    # a Box(0, 255, uint8) (pixels, RAM), as SB3 and the CNN read images, so they enter an MLP and the
    # --normalize-obs statistics in [0, 1]. Decided by the space, never by the values seen.
    scale: float = 1.0

    @property
    def image(self) -> bool:
        """A (C, H, W) uint8 image, which the model may read with a CNN."""
        return len(self.shape) == 3 and self.dtype == np.uint8

    @property
    def named(self) -> str:
        """This leaf as a sentence names it: "an observation" or "observation['image']"."""
        return "an observation" if self.key == SINGLE_KEY else f"observation[{self.key!r}]"

    def encode(self, value: Any, where: str) -> np.ndarray:
        """The stored form of this leaf's value; raise ValueError naming the shape that is wrong, and
        BadObservation for a value storing would change."""
        array = np.asarray(value)
        if array.shape != self.raw_shape:
            raise ValueError(f"{where} returned {self.named} of shape {array.shape} but its "
                             f"observation_space says {self.raw_shape}")
        if self.transform == "mask":
            return self._mask(array, where)
        self._refuse_unstorable(array, where)
        if self.transform == "hwc":
            return np.moveaxis(array, -1, 0)
        if self.transform == "stack_hwc":
            return np.moveaxis(array, -1, 1).reshape(self.shape)
        if self.transform == "channel":
            return array[None]
        if self.transform == "one_hot":
            hot = np.zeros(self.shape, self.dtype)
            offsets = np.cumsum((0, *self.sizes[:-1]))
            hot[offsets + array.reshape(-1) - np.asarray(self.starts)] = 1
            return hot
        return array

    def _mask(self, array: np.ndarray, where: str) -> np.ndarray:
        """A legal-action mask as int8 bits; raise BadObservation for a value other than 0 or 1, or for a
        choice with no legal action (sampling could only ignore such a mask)."""
        bad = np.flatnonzero((array != 0) & (array != 1))
        if bad.size:
            first = int(bad[0])
            raise BadObservation(where, "an action mask", f"{array.flat[first]}{_index(array, first)}, which "
                                 "is not 0 or 1", "return 1 for a legal action and 0 for an illegal one")
        bits = array.astype(np.int8)
        for choice, group in enumerate(np.split(bits, np.cumsum(self.sizes[:-1]))):
            if not group.any():
                which = f" for choice {choice}" if len(self.sizes) > 1 else ""
                raise BadObservation(where, "an action mask", f"no legal action{which}",
                                     "allow at least one action at every step (end the episode when none "
                                     "is left)")
        return bits

    def _refuse_unstorable(self, array: np.ndarray, where: str) -> None:
        """Raise BadObservation for a value of an integer leaf that storing would change: numpy would
        index another category's one-hot, wrap an integer around, or cut a float to a whole number.
        Vectorised: a few comparisons per observation, nothing next to an env step."""
        if (self.transform != "one_hot" and self.dtype.kind not in "iu") or array.size == 0:
            return  # floats are stored as floats; NaN and Inf are refused once stored (ObsLayout.write)
        if array.dtype.kind not in "biu":
            image = " (scale a [0, 1] float image by 255 first)" if self.image else ""
            raise BadObservation(where, self.named, f"{array.flat[0]}{_index(array, 0)}, a {array.dtype} "
                                 f"where its observation_space says {self.raw_dtype}, which storing would "
                                 "cut to a whole number", f"return {self.raw_dtype} values{image}")
        if self.transform == "one_hot":
            low = np.asarray(self.starts).reshape(self.raw_shape)
            high = low + np.asarray(self.sizes).reshape(self.raw_shape) - 1
        elif self.binary:
            low, high = np.asarray(0), np.asarray(1)
        elif np.can_cast(array.dtype, self.dtype):
            return  # every value of its dtype fits
        else:
            low, high = np.asarray(np.iinfo(self.dtype).min), np.asarray(np.iinfo(self.dtype).max)
        bad = np.flatnonzero((array < low) | (array > high))
        if bad.size == 0:
            return
        first = int(bad[0])
        value = f"{array.flat[first]}{_index(array, first)}"
        if self.transform == "one_hot":
            lowest, highest = (np.broadcast_to(bound, array.shape).flat[first] for bound in (low, high))
            raise BadObservation(where, self.named, f"{value}, outside its categories {lowest}..{highest}",
                                 "return values its observation_space contains")
        if self.binary:
            raise BadObservation(where, self.named, f"{value}, which is not 0 or 1",
                                 "return only 0s and 1s, as MultiBinary says")
        raise BadObservation(where, self.named, f"{value}, which does not fit its {self.dtype} storage "
                             f"({low}..{high}) and would wrap around",
                             f"return {self.raw_dtype} values within that range (clip or rescale them)")


@dataclass(frozen=True)
class ObsLayout:
    fields: tuple[ObsField, ...]
    dropped: tuple[str, ...] = ()  # leaves that carry no numbers (Text), left out

    @classmethod
    def from_space(cls, space: gym.Space, mask_sizes: tuple[int, ...] = ()) -> ObsLayout:
        """The layout of `space`; with `mask_sizes` (the categories of each action choice) its top-level
        `action_mask` key is a legal-action mask (raise UnsupportedSpace if it cannot be one)."""
        fields: list[ObsField] = []
        dropped: list[str] = []
        mask = None
        if mask_sizes:
            assert isinstance(space, gym.spaces.Dict), "only a Dict observation has an action_mask key"
            if (problem := mask_field_space(space[ACTION_MASK_KEY], ACTION_MASK_KEY, mask_sizes)) is not None:
                raise UnsupportedSpace(problem + ".")
            size = (sum(mask_sizes),)
            mask = ObsField(ACTION_MASK_KEY, (ACTION_MASK_KEY,), size, size, np.dtype(np.int8),
                            np.dtype(space[ACTION_MASK_KEY].dtype), "mask", mask_sizes, binary=True)
            space = gym.spaces.Dict({k: v for k, v in space.spaces.items() if k != ACTION_MASK_KEY})
        _collect(space, (), fields, dropped)
        if not fields:
            raise UnsupportedSpace(f"observation_space is {space}, which holds no numeric array; "
                                   f"htsrl-aio learns from {SUPPORTED_OBS}.")
        if mask is not None:
            fields.append(mask)  # last: the keys of the rest keep the order of an unmasked run
        return cls(tuple(fields), tuple(dropped))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.fields)

    @property
    def mask_key(self) -> str | None:
        """The key of the legal-action mask, or None when actions are not masked."""
        return next((f.key for f in self.fields if f.transform == "mask"), None)

    def paired_with(self, key: str, space: gym.spaces.Box) -> ObsLayout:
        """The layout of the pair (an observation of this layout, a value of `space`), the value stored
        as key `key` and the observation under its own keys."""
        fields = tuple(dataclasses.replace(f, path=(0, *f.path)) for f in self.fields)
        return ObsLayout((*fields, _box_field(key, (1,), space)), self.dropped)

    def describe(self) -> str:
        """As stored, e.g. "(4,) float32" or "image (3, 7, 7) uint8 + direction (4,) float32"."""
        if len(self.fields) == 1 and self.fields[0].key == SINGLE_KEY:
            text = f"{self.fields[0].shape} {self.fields[0].dtype}"
        else:
            text = " + ".join(f"{f.key} {f.shape} {f.dtype}" for f in self.fields)
        return text + (f" (left out: {', '.join(self.dropped)})" if self.dropped else "")

    def arrays(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Key -> (stored shape, stored dtype)."""
        return {f.key: (f.shape, f.dtype) for f in self.fields}

    def write(self, obs: Any, target: Mapping[str, np.ndarray], where: str) -> None:
        """Store one observation into `target` (one array per key, e.g. a storage slot); raise
        NonFinite if a float array holds NaN or Inf (as stored: a float64 too large for float32 too)."""
        for f in self.fields:
            slot = target[f.key]
            slot[...] = f.encode(self.leaf(obs, f, where), where)
            if slot.dtype.kind == "f" and not np.isfinite(slot).all():
                raise NonFinite(where, "observation" if f.key == SINGLE_KEY else f"observation[{f.key!r}]")

    @staticmethod
    def leaf(obs: Any, f: ObsField, where: str) -> Any:
        """The part of `obs` that field `f` stores."""
        for part in f.path:
            try:
                obs = obs[part]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{where} returned an observation without {f.key!r}, which its "
                                 "observation_space has") from None
        return obs

    def encode(self, obs: Any, where: str = "the env") -> dict[str, np.ndarray]:
        """One observation as new stored-form arrays (for eval and Trainer.act)."""
        out = {key: np.empty(shape, dtype) for key, (shape, dtype) in self.arrays().items()}
        self.write(obs, out, where)
        return out


def _index(array: np.ndarray, flat: int) -> str:
    """Where element `flat` of `array` sits, for a sentence: "" for a scalar, " at index (0, 2, 1)"."""
    if array.ndim == 0:
        return ""
    index = np.unravel_index(flat, array.shape)
    return f" at index {index[0] if array.ndim == 1 else tuple(int(i) for i in index)}"


def _collect(space: gym.Space, path: tuple[str | int, ...], fields: list[ObsField],
             dropped: list[str]) -> None:
    key = ".".join(map(str, path)) or SINGLE_KEY
    if isinstance(space, gym.spaces.Dict):
        for name, sub in space.spaces.items():
            _collect(sub, (*path, name), fields, dropped)
    elif isinstance(space, gym.spaces.Tuple):
        for index, sub in enumerate(space.spaces):
            _collect(sub, (*path, index), fields, dropped)
    elif _is_text(space):
        dropped.append(key)
    elif isinstance(space, gym.spaces.Box):
        fields.append(_box_field(key, path, space))
    elif isinstance(space, gym.spaces.Discrete):
        fields.append(ObsField(key, path, (), (int(space.n),), np.dtype(np.float32), np.dtype(space.dtype),
                               "one_hot", (int(space.n),), (int(space.start),)))
    elif isinstance(space, gym.spaces.MultiDiscrete) and len(space.nvec.shape) == 1:
        sizes = tuple(int(n) for n in space.nvec)
        starts = tuple(int(s) for s in np.broadcast_to(getattr(space, "start", 0), space.nvec.shape))
        fields.append(ObsField(key, path, (len(sizes),), (sum(sizes),), np.dtype(np.float32),
                               np.dtype(space.dtype), "one_hot", sizes, starts))
    elif isinstance(space, gym.spaces.MultiBinary):
        shape = tuple(np.atleast_1d(space.n).tolist())
        fields.append(ObsField(key, path, shape, shape, np.dtype(np.int8), np.dtype(space.dtype),
                               binary=True))
    else:
        where = "observation_space" if not path else f"observation_space[{key!r}]"
        raise UnsupportedSpace(f"{where} is {space}; htsrl-aio learns from {SUPPORTED_OBS} (wrap the env "
                               "to turn it into one of those).")


def _is_text(space: gym.Space) -> bool:
    """A leaf of words (gymnasium's Text, MiniGrid's MissionSpace): nothing a network can read."""
    if isinstance(space, gym.spaces.Text):
        return True
    try:
        return isinstance(space.sample(), str)
    except Exception:  # a space that cannot sample is no text space we know
        return False


def _box_field(key: str, path: tuple[str | int, ...], space: gym.spaces.Box) -> ObsField:
    shape, dtype = tuple(space.shape), np.dtype(space.dtype)
    scale = 1 / 255 if _holds_bytes(space) else 1.0
    if dtype == np.uint8 and len(shape) == 3 and 1 <= shape[-1] <= 4 and shape[0] > 4:
        return ObsField(key, path, shape, (shape[-1], *shape[:2]), dtype, dtype, "hwc",  # HWC -> CHW, once
                        scale=scale)
    if dtype == np.uint8 and len(shape) == 4 and 1 <= shape[-1] <= 4:  # stacked HWC frames
        return ObsField(key, path, shape, (shape[0] * shape[-1], *shape[1:3]), dtype, dtype, "stack_hwc",
                        scale=scale)
    if dtype == np.uint8 and len(shape) == 2 and min(shape) > 4:
        return ObsField(key, path, shape, (1, *shape), dtype, dtype, "channel", scale=scale)  # grayscale
    # float64 observations (MuJoCo's) are stored and learned as float32: the model computes in it.
    stored = np.dtype(np.float32) if dtype == np.float64 else dtype
    return ObsField(key, path, shape, shape, stored, dtype, scale=scale)


def _holds_bytes(space: gym.spaces.Box) -> bool:
    """A uint8 Box bounded by 0 and 255 everywhere (SB3's test for an image space, any shape)."""
    return space.dtype == np.uint8 and bool(np.all(space.low == 0) and np.all(space.high == 255))


ActionKind = Literal["discrete", "multi_discrete", "multi_binary", "box"]


def _float32_bounds(bounds: np.ndarray) -> np.ndarray:
    """Box bounds as float32, flat. A float64 bound beyond float32's range (EnvPool's ViZDoom tasks bound
    their actions by DBL_MAX) is infinite, unbounded, in float32: that cast is meant, so numpy's overflow
    warning is not shown."""
    with np.errstate(over="ignore"):
        return bounds.reshape(-1).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ActionSpec:
    """How one action is sampled, stored (a row of `shape` and `dtype`) and given to `env.step`."""

    kind: ActionKind
    shape: tuple[int, ...]  # stored row: () for Discrete, (k,) otherwise
    dtype: np.dtype
    sizes: tuple[int, ...] = ()  # categories of each categorical choice (Discrete, MultiDiscrete)
    starts: tuple[int, ...] = ()  # lowest action of each choice
    low: np.ndarray | None = None  # Box bounds, flat
    high: np.ndarray | None = None
    env_shape: tuple[int, ...] = ()  # the shape env.step expects (Box, MultiBinary)
    env_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.int64))

    @classmethod
    def from_space(cls, space: gym.Space) -> ActionSpec:
        if isinstance(space, gym.spaces.Discrete):
            return cls("discrete", (), np.dtype(np.int64), (int(space.n),), (int(space.start),))
        if isinstance(space, gym.spaces.MultiDiscrete) and len(space.nvec.shape) == 1:
            sizes = tuple(int(n) for n in space.nvec)
            starts = tuple(int(s) for s in np.broadcast_to(getattr(space, "start", 0), space.nvec.shape))
            return cls("multi_discrete", (len(sizes),), np.dtype(np.int64), sizes, starts,
                       env_shape=tuple(space.shape), env_dtype=np.dtype(space.dtype))
        if isinstance(space, gym.spaces.MultiBinary):
            shape = tuple(np.atleast_1d(space.n).tolist())
            return cls("multi_binary", (math.prod(shape),), np.dtype(np.int64), env_shape=shape,
                       env_dtype=np.dtype(space.dtype))
        if isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating):
            n = math.prod(space.shape)
            return cls("box", (n,), np.dtype(np.float32), low=_float32_bounds(space.low),
                       high=_float32_bounds(space.high), env_shape=tuple(space.shape),
                       env_dtype=np.dtype(space.dtype))
        raise UnsupportedSpace(f"action_space is {space}; htsrl-aio samples {SUPPORTED_ACTIONS} (float) "
                               "actions (wrap the env to turn its actions into one of those).")

    def describe(self) -> str:
        if self.kind == "discrete":
            return f"{self.sizes[0]} actions"
        if self.kind == "multi_discrete":
            return f"{len(self.sizes)} choices of {'x'.join(map(str, self.sizes))} actions"
        if self.kind == "multi_binary":
            return f"{self.size} binary actions"
        return f"continuous actions {self.env_shape} (Gaussian, clipped to the bounds)"

    @property
    def size(self) -> int:
        """Numbers in one stored action row."""
        return math.prod(self.shape)

    def to_env(self, action: Any) -> Any:
        """The stored action as `env.step` takes it; Box samples are clipped to the bounds only here."""
        if self.kind == "discrete":
            return int(action) + self.starts[0]
        array = np.asarray(action)
        if self.kind == "multi_discrete":
            return (array + np.asarray(self.starts)).astype(self.env_dtype).reshape(self.env_shape)
        if self.kind == "multi_binary":
            return array.astype(self.env_dtype).reshape(self.env_shape)
        return np.clip(array, self.low, self.high).astype(self.env_dtype).reshape(self.env_shape)

    def random(self, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
        """A uniformly random stored action row (for the env checker); with a legal-action `mask` (one bit
        per category of each choice), uniform over the legal ones."""
        if self.kind in ("discrete", "multi_discrete"):
            groups = np.split(np.ones(sum(self.sizes)) if mask is None else mask, np.cumsum(self.sizes[:-1]))
            row = np.array([rng.choice(np.flatnonzero(group)) for group in groups], dtype=self.dtype)
            return row.reshape(self.shape)
        if self.kind == "multi_binary":
            return rng.integers(0, 2, self.shape).astype(self.dtype)
        assert self.low is not None and self.high is not None
        low = np.where(np.isfinite(self.low), self.low, -1.0)
        high = np.where(np.isfinite(self.high), self.high, 1.0)
        return rng.uniform(low, high).astype(self.dtype)
