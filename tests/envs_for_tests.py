"""Envs used by the tests. Module-level factories, so spawned worker processes can import them."""

from __future__ import annotations

import asyncio
import random
import time
from typing import ClassVar

import gymnasium as gym
import numpy as np

_UNSEEDED = random.SystemRandom()  # deliberately outside every seed: timing noise only


class JitterCartPole(gym.Wrapper):
    """CartPole whose steps take a random 0-2 ms, drawn from the OS entropy pool."""

    def step(self, action):
        time.sleep(_UNSEEDED.uniform(0.0, 0.002))
        return super().step(action)


def jitter_cartpole() -> gym.Env:
    return JitterCartPole(gym.make("CartPole-v1", max_episode_steps=60))


class _SpoiledAfter(gym.Wrapper):
    """Behaves for `after` steps; from then on every step result goes through `spoil`."""

    def __init__(self, env: gym.Env, after: int, spoil) -> None:
        super().__init__(env)
        self.after = after
        self.spoil = spoil
        self.steps = 0

    def step(self, action):
        result = super().step(action)
        self.steps += 1
        return self.spoil(result) if self.steps > self.after else result


def _lose_connection(result):
    raise RuntimeError("simulator lost its connection")


def raising_cartpole() -> gym.Env:
    return _SpoiledAfter(gym.make("CartPole-v1"), 100, _lose_connection)


class _WrongShapeAfterReset(gym.Wrapper):
    def step(self, action):
        _obs, reward, terminated, truncated, info = super().step(action)
        return np.zeros(7, np.float32), reward, terminated, truncated, info


def wrong_shape_cartpole() -> gym.Env:
    return _WrongShapeAfterReset(gym.make("CartPole-v1"))


def dict_action_env() -> gym.Env:
    """CartPole whose action is a Dict: a space the runtime cannot sample."""
    return gym.wrappers.TransformAction(gym.make("CartPole-v1"), lambda a: int(a["push"]),
                                        gym.spaces.Dict({"push": gym.spaces.Discrete(2)}))


class _SuicidalCartPole(gym.Wrapper):
    def step(self, action):
        import os

        if self.unwrapped.np_random.random() < 0.01:
            os._exit(9)
        return super().step(action)


def dying_cartpole() -> gym.Env:
    return _SuicidalCartPole(gym.make("CartPole-v1"))


class AsyncCartPole:
    """CartPole as an AsyncEnv whose every step awaits a random 0-2 ms (outside every seed)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self._env = gym.make("CartPole-v1", max_episode_steps=60)
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self.fail_after = fail_after
        self.steps = 0
        self.closed = False

    async def reset(self, *, seed=None, options=None):
        await asyncio.sleep(_UNSEEDED.uniform(0.0, 0.002))
        return self._env.reset(seed=seed, options=options)

    async def step(self, action):
        await asyncio.sleep(_UNSEEDED.uniform(0.0, 0.002))
        self.steps += 1
        if self.fail_after is not None and self.steps > self.fail_after:
            raise ConnectionResetError("game server hung up")
        return self._env.step(action)

    async def close(self):
        self.closed = True
        self._env.close()


def async_cartpole() -> AsyncCartPole:
    return AsyncCartPole()


def failing_async_cartpole() -> AsyncCartPole:
    return AsyncCartPole(fail_after=50)


class HalfAsync:
    observation_space = gym.spaces.Box(-1, 1, (4,))
    action_space = gym.spaces.Discrete(2)

    async def reset(self, *, seed=None, options=None):
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


def half_async() -> HalfAsync:
    return HalfAsync()


def cartpole_60() -> gym.Env:
    """The same env as AsyncCartPole, without latency, for stepping in worker processes."""
    return gym.make("CartPole-v1", max_episode_steps=60)


def _nan_reward(result):
    obs, _reward, terminated, truncated, info = result
    return obs, float("nan"), terminated, truncated, info


def nan_reward_cartpole() -> gym.Env:
    return _SpoiledAfter(gym.make("CartPole-v1"), 40, _nan_reward)


def _inf_obs(result):
    obs, reward, terminated, truncated, info = result
    return np.full_like(obs, np.inf), reward, terminated, truncated, info


def inf_obs_cartpole() -> gym.Env:
    return _SpoiledAfter(gym.make("CartPole-v1", max_episode_steps=500), 5, _inf_obs)


def _huge_reward(result):
    obs, _reward, terminated, truncated, info = result
    return obs, 1e30, terminated, truncated, info


def huge_reward_cartpole() -> gym.Env:
    """Finite rewards so large that squared value errors overflow: the learner's losses become Inf."""
    return _SpoiledAfter(gym.make("CartPole-v1"), 40, _huge_reward)


class _HoldsALock(gym.Wrapper):
    """An env with a live OS handle, like a socket to a simulator: it cannot be pickled."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        import threading

        self.lock = threading.Lock()


def unpicklable_cartpole() -> gym.Env:
    return _HoldsALock(gym.make("CartPole-v1"))


def always_raising_cartpole() -> gym.Env:
    """Fails from its second step on: it passes the one-step check every run makes, then never works."""
    return _SpoiledAfter(gym.make("CartPole-v1"), 1, _lose_connection)


def _first_to_get_here(marker_variable: str) -> bool:
    """True for the first caller in this test (any process): it creates the file $marker_variable names."""
    import os

    try:
        os.close(os.open(os.environ[marker_variable], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _hang() -> None:
    while True:
        time.sleep(3600)


class _DiesOnce(gym.Wrapper):
    """Kills its worker process at its 50th step, once per test: the first env to get there wins."""

    def step(self, action):
        import os

        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 50 and _first_to_get_here("HTSRL_TEST_DEATH_MARKER"):
            os._exit(9)
        return super().step(action)


def dies_once_cartpole() -> gym.Env:
    return _DiesOnce(gym.make("CartPole-v1"))


class ManySpacesEnv(gym.Env):
    """Episodes of 9-15 steps over a Tuple observation (a Discrete, an HWC uint8 image, a float64 Box)
    with the action space named by `actions`; steps take a random 0-1 ms, drawn outside every seed.

    The env refuses an action its space does not contain, so the runtime's conversion of stored
    action rows (Discrete start, Box clipping, MultiBinary dtype) is checked at every step.
    """

    ACTIONS: ClassVar[dict[str, gym.Space]] = {
        "multi_discrete": gym.spaces.MultiDiscrete([3, 2], start=[-1, 0]),
        "multi_binary": gym.spaces.MultiBinary(3),
        "box": gym.spaces.Box(-2.0, 2.0, (2,), np.float32),
        "discrete": gym.spaces.Discrete(3, start=5),
    }

    def __init__(self, actions: str = "multi_discrete") -> None:
        self.observation_space = gym.spaces.Tuple((
            gym.spaces.Discrete(5, start=1),
            gym.spaces.Box(0, 255, (36, 36, 3), np.uint8),
            gym.spaces.Box(-1.0, 1.0, (3,), np.float64),
        ))
        self.action_space = self.ACTIONS[actions]
        self._rng = np.random.default_rng(0)
        self._t, self._limit = 0, 9

    def _obs(self):
        image = self._rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
        return int(self._rng.integers(1, 6)), image, self._rng.uniform(-1, 1, 3)

    def reset(self, *, seed=None, options=None):
        self._rng = np.random.default_rng(seed)
        self._t, self._limit = 0, int(self._rng.integers(9, 16))
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        time.sleep(_UNSEEDED.uniform(0.0, 0.001))
        self._t += 1
        reward = float(np.sum(np.asarray(action, np.float64))) * 0.1 + float(self._rng.normal()) * 0.01
        ended = self._t >= self._limit
        terminated = ended and self._t % 2 == 0
        return self._obs(), reward, terminated, ended and not terminated, {}


class _HangsInWorkers(gym.Wrapper):
    """Steps forever inside an env worker process (the start-up probe passes), after touching a file
    named after its pid in $HTSRL_TEST_HANG_DIR, so a test knows it is stuck."""

    def step(self, action):
        import multiprocessing
        import os
        from pathlib import Path

        if multiprocessing.current_process().name.startswith("htsrl-env-worker"):
            (Path(os.environ["HTSRL_TEST_HANG_DIR"]) / str(os.getpid())).touch()
            _hang()
        return super().step(action)


def hanging_cartpole() -> gym.Env:
    return _HangsInWorkers(gym.make("CartPole-v1"))


class _HangsOnce(gym.Wrapper):
    """Never answers its 30th step, once per test ($HTSRL_TEST_HANG_MARKER): the first env to get there."""

    def step(self, action):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 30 and _first_to_get_here("HTSRL_TEST_HANG_MARKER"):
            _hang()
        return super().step(action)


def hangs_once_cartpole() -> gym.Env:
    return _HangsOnce(gym.make("CartPole-v1"))


class _AsyncHangsOnce(AsyncCartPole):
    """An AsyncEnv whose 30th step awaits forever, once per test ($HTSRL_TEST_HANG_MARKER)."""

    async def step(self, action):
        if self.steps == 29 and _first_to_get_here("HTSRL_TEST_HANG_MARKER"):
            await asyncio.Event().wait()
        return await super().step(action)


def async_hangs_once_cartpole() -> AsyncCartPole:
    return _AsyncHangsOnce()


class _FirstStep(gym.Wrapper):
    """Its first step hangs or ends the process: what the start-up probe and check-env must survive."""

    def __init__(self, env: gym.Env, fault: str) -> None:
        super().__init__(env)
        self.fault = fault

    def step(self, action):
        import os

        if self.fault == "exit":
            os._exit(3)
        _hang()


def hangs_at_first_step() -> gym.Env:
    return _FirstStep(gym.make("CartPole-v1"), "hang")


def exits_at_first_step() -> gym.Env:
    return _FirstStep(gym.make("CartPole-v1"), "exit")


class _HangsInClose(gym.Wrapper):
    def close(self):
        _hang()


def hangs_in_close_cartpole() -> gym.Env:
    """Steps as CartPole does; its close() never returns (a simulator that will not shut down)."""
    return _HangsInClose(gym.make("CartPole-v1"))


class _StartsProcesses(gym.Wrapper):
    """Starts two long-lived processes it never stops, one in a session of its own, as a simulator
    launcher might; their pids go to files in $HTSRL_TEST_SPAWN_DIR."""

    def __init__(self, env: gym.Env) -> None:
        import os
        import subprocess
        from pathlib import Path

        super().__init__(env)
        for new_session in (False, True):
            sleeper = subprocess.Popen(["sleep", "600"], start_new_session=new_session)
            (Path(os.environ["HTSRL_TEST_SPAWN_DIR"]) / str(sleeper.pid)).touch()


def process_starting_cartpole() -> gym.Env:
    return _StartsProcesses(jitter_cartpole())


def process_starting_dies_once_cartpole() -> gym.Env:
    """Starts processes as process_starting_cartpole does, and kills its worker once as dies_once_cartpole."""
    return _DiesOnce(_StartsProcesses(gym.make("CartPole-v1")))


class _HangsAfter(gym.Wrapper):
    """Steps normally 40 times (the start-up probe takes one), then never answers again, after creating
    the file $HTSRL_TEST_FROZEN_MARKER names (if set), so a test knows it is stuck."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._steps = 0

    def step(self, action):
        import os
        from pathlib import Path

        self._steps += 1
        if self._steps > 40:
            if "HTSRL_TEST_FROZEN_MARKER" in os.environ:
                Path(os.environ["HTSRL_TEST_FROZEN_MARKER"]).touch()
            _hang()
        return super().step(action)


def hangs_after_40_steps_cartpole() -> gym.Env:
    return _HangsAfter(gym.make("CartPole-v1"))


def _in_env_worker() -> bool:
    import multiprocessing

    return multiprocessing.current_process().name.startswith("htsrl-env-worker")


def exits_in_workers() -> gym.Env:
    """Ends its env worker process while it is created there (the start-up probe passes)."""
    import os

    if _in_env_worker():
        os._exit(3)
    return gym.make("CartPole-v1")


def hangs_in_workers() -> gym.Env:
    """Is never done being created in an env worker process (the start-up probe passes)."""
    if _in_env_worker():
        _hang()
    return gym.make("CartPole-v1")


def pixel_cartpole(render_mode: str | None = None) -> gym.Env:
    """CartPole seen as (48, 64, 3) pixels: its rendering is the observation, whatever `render_mode`
    asks (it renders rgb_array frames either way)."""
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.unwrapped.screen_width, env.unwrapped.screen_height = 64, 48
    return gym.wrappers.AddRenderObservation(env, render_only=True)


gym.register("PixelCartPole-v0", entry_point=pixel_cartpole)


class _StallsInWorkers(gym.Wrapper):
    """Resets only once the file HTSRL_TEST_GO_MARKER names exists, in training's worker processes
    (the env checker's probe passes): a run stays in its start-up, before its first update, until the
    test lets it go on. Waiting, it creates that name + ".waiting": the run has started its processes."""

    def reset(self, **kwargs):
        import multiprocessing
        import os
        from pathlib import Path

        if multiprocessing.current_process().name.startswith("htsrl-env-worker"):
            Path(os.environ["HTSRL_TEST_GO_MARKER"] + ".waiting").touch()
            while not os.path.exists(os.environ["HTSRL_TEST_GO_MARKER"]):
                time.sleep(0.05)
        return super().reset(**kwargs)


def stalls_in_workers_cartpole() -> gym.Env:
    return _StallsInWorkers(gym.make("CartPole-v1"))


class _HeldWhileMarked(gym.Wrapper):
    """Steps only while the file HTSRL_TEST_HOLD_MARKER names does not exist: a test holds the run
    before its next swap while it looks at what a signal did."""

    def step(self, action):
        import os

        while os.path.exists(os.environ["HTSRL_TEST_HOLD_MARKER"]):
            time.sleep(0.01)
        return super().step(action)


def held_while_marked_cartpole() -> gym.Env:
    return _HeldWhileMarked(gym.make("CartPole-v1"))


class BadObservationEnv(gym.Env):
    """From step `after` on, an observation its space cannot hold (what a hostile user found stored
    wrong without a word); the start-up probe's one step passes, so a run meets it mid-episode."""

    FAULTS: ClassVar[dict[str, tuple[gym.Space, np.ndarray | int]]] = {
        "multi_discrete_out_of_range": (gym.spaces.MultiDiscrete([3, 3]), np.array([5, 0])),
        "multi_discrete_negative": (gym.spaces.MultiDiscrete([3, 3]), np.array([0, -1])),
        "discrete_negative": (gym.spaces.Discrete(5), -2),
        "multi_binary_not_0_or_1": (gym.spaces.MultiBinary(4), np.array([7, -3, 1, 0], np.int8)),
        "float_frame": (gym.spaces.Box(0, 255, (36, 36, 3), np.uint8), np.full((36, 36, 3), 0.5, np.float32)),
        "int64_frame_that_wraps": (gym.spaces.Box(0, 255, (36, 36, 3), np.uint8),
                                   np.full((36, 36, 3), 765, np.int64)),
    }

    def __init__(self, fault: str, after: int = 3) -> None:
        self.observation_space, self._bad = self.FAULTS[fault]
        self.action_space = gym.spaces.Discrete(2)
        self._good = np.zeros(self.observation_space.shape, self.observation_space.dtype)
        self._after, self._t = after, 0

    def reset(self, *, seed=None, options=None):
        self._t = 0
        return self._good, {}

    def step(self, action):
        self._t += 1
        return (self._bad if self._t >= self._after else self._good), 1.0, self._t >= 20, False, {}


def bad_observation_env(fault: str) -> gym.Env:
    return BadObservationEnv(fault)


class CueEnv(gym.Env):
    """A memory task: the first observation shows a cue (+1 or -1), the next `delay` show nothing, and
    the last step pays +1 for the action that names the cue (0 for +1, 1 for -1) and -1 otherwise. A
    memoryless policy sees the same observations whatever the cue, so its expected return is 0; a
    policy that remembers the cue scores 1. The second entry says whether the answer is due now."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, delay: int = 3) -> None:
        self.delay = delay
        self._cue, self._t = 1, 0

    def _obs(self) -> np.ndarray:
        cue = self._cue if self._t == 0 else 0
        return np.array([cue, float(self._t == self.delay)], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cue, self._t = (1 if self.np_random.random() < 0.5 else -1), 0
        return self._obs(), {}

    def step(self, action):
        if self._t < self.delay:
            self._t += 1
            return self._obs(), 0.0, False, False, {}
        right = int(action) == (0 if self._cue == 1 else 1)
        return self._obs(), 1.0 if right else -1.0, True, False, {}


class ScreenAndVarsEnv(gym.Env):
    """A screen (uint8, 12x16 RGB) beside game variables, as ViZDoom gives them, in a Dict or a Tuple
    (`tuple_obs`); the screen's pixels count the steps, so stacked frames can be told apart."""

    def __init__(self, tuple_obs: bool = False) -> None:
        screen = gym.spaces.Box(0, 255, (12, 16, 3), np.uint8)
        variables = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.tuple_obs = tuple_obs
        self.observation_space = (gym.spaces.Tuple((screen, variables)) if tuple_obs
                                  else gym.spaces.Dict({"screen": screen, "vars": variables}))
        self.action_space = gym.spaces.Discrete(2)
        self._t = 0

    def _obs(self):
        screen = np.full((12, 16, 3), (10 * self._t) % 256, np.uint8)
        screen[..., 0] = 200  # not gray: grayscale changes it
        variables = np.array([0.5, -0.5], np.float32)
        return (screen, variables) if self.tuple_obs else {"screen": screen, "vars": variables}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        return self._obs(), 1.0, self._t >= 10, False, {}


def screen_and_vars(tuple_obs: bool = False) -> gym.Env:
    return ScreenAndVarsEnv(tuple_obs)


class MaskedEnv(gym.Env):
    """CartPole-sized env that offers an action mask the way `kind` says: sb3-contrib's `method`, a Dict
    observation `key`, or the step `info` (as Taxi; `legal`: as EnvPool's games name it)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        vector = gym.spaces.Box(-1, 1, (4,), np.float32)
        self.observation_space = (gym.spaces.Dict({"obs": vector, "action_mask": gym.spaces.MultiBinary(2)})
                                  if kind == "key" else vector)
        self.action_space = gym.spaces.Discrete(2)
        if kind == "method":
            self.action_masks = lambda: np.array([True, False])

    def _obs(self):
        vector = np.zeros(4, np.float32)
        return {"obs": vector, "action_mask": np.array([1, 0], np.int8)} if self.kind == "key" else vector

    def _info(self):
        key = {"info": "action_mask", "legal": "legal_action_mask"}.get(self.kind)  # legal: EnvPool's name
        return {key: np.array([1, 0], np.int8)} if key else {}

    def reset(self, *, seed=None, options=None):
        return self._obs(), self._info()

    def step(self, action):
        return self._obs(), 0.0, False, False, self._info()


def masked_env(kind: str) -> gym.Env:
    return MaskedEnv(kind)


class RandomMaskEnv(gym.Env):
    """An env whose legal actions change every step (each action legal with probability 1/2, at least one
    per choice, drawn from the episode's seed), offered the way `source` says: a Dict observation `key`,
    sb3-contrib's `method`, or the reset and step `info`. Taking an illegal action raises, so a run that
    ends proves no masked action was sampled. `actions`: "discrete" (5) or "multi_discrete" ([3, 4]).
    The reward prefers the highest legal action of each choice; steps take a random 0-1 ms (unseeded).
    `fault`: "none_legal" offers a mask that allows nothing at the third step."""

    def __init__(self, source: str = "key", actions: str = "discrete", fault: str = "") -> None:
        # fault "late_info": the info source's mask is missing from reset()'s info
        self.source, self.fault = source, fault
        self.sizes = (5,) if actions == "discrete" else (3, 4)
        self.action_space = gym.spaces.Discrete(5) if actions == "discrete" \
            else gym.spaces.MultiDiscrete([3, 4])
        features = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        mask = gym.spaces.MultiBinary(sum(self.sizes))
        self.observation_space = gym.spaces.Dict({"features": features, "action_mask": mask}) \
            if source == "key" else features
        self._rng = np.random.default_rng(0)
        self._mask = np.ones(sum(self.sizes), np.int8)
        self._t = 0
        if source == "method":
            self.action_masks = lambda: self._mask.astype(bool)

    def _draw(self) -> None:
        groups = []
        for n in self.sizes:
            group = (self._rng.random(n) < 0.5).astype(np.int8)
            group[self._rng.integers(n)] = 1
            groups.append(group)
        self._mask = np.concatenate(groups)
        if self.fault == "none_legal" and self._t == 2:
            self._mask[:] = 0

    def _out(self) -> tuple[object, dict]:
        features = self._rng.uniform(-1, 1, 4).astype(np.float32)
        obs = {"features": features, "action_mask": self._mask.copy()} if self.source == "key" else features
        return obs, ({"action_mask": self._mask.copy()} if self.source == "info" else {})

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._draw()
        obs, info = self._out()
        return obs, ({} if self.fault == "late_info" else info)

    def step(self, action):
        time.sleep(_UNSEEDED.uniform(0.0, 0.001))
        choices = np.atleast_1d(np.asarray(action))
        offsets = np.cumsum((0, *self.sizes[:-1]))
        if not self._mask[offsets + choices].all():
            raise ValueError(f"illegal action {action} under the mask {self._mask.tolist()}")
        reward = float(sum(c / (n - 1) for c, n in zip(choices, self.sizes)))
        self._t += 1
        self._draw()
        obs, info = self._out()
        return obs, reward, False, self._t >= 20, info


def random_mask_env(source: str = "key", actions: str = "discrete", fault: str = "") -> gym.Env:
    return RandomMaskEnv(source, actions, fault)


class MeetingAgents:
    """A PettingZoo ParallelEnv of `agents` agents on a line: each sees its position, the mean of the
    others' and a seeded noise, moves -1/0/+1, and all share a reward for standing close together.
    Episodes of 8-14 steps end for every agent still in them at once; steps take a random 0-1 ms, drawn
    outside every seed, so which agent's row answers first varies from run to run. `fault` gets one
    thing wrong:
    "different_spaces" (the last agent has 4 actions), "stranger" (an agent outside possible_agents joins
    at step 2), "unseen" (agent_0 leaves at step 2 and comes back at step 4 without an observation),
    "vanishes" (agent_0 leaves at step 2 without terminating), "state_shape" (state() has one
    number too many from step 2 on). `leaving`: each step, each
    agent but the last one in the episode leaves (terminates) with
    this probability, drawn from the episode's seed, as Knights-Archers-Zombies' agents die. `late`: the
    last `late` agents are not in the episode at its reset and join it after a step drawn from the
    episode's seed (1-5; an agent that left may come back, `returns`: agent_0 leaves after step 2 and
    comes back after step 4). `fails_at`: each instance raises at that many step calls, and again every
    `fails_at` calls of its successors; `dies_at`: the first instance of a test (HTSRL_TEST_DEATH_MARKER)
    to make that many step calls kills its worker process.
    `state`: the env has PettingZoo's state() and state_space, the agents' positions alone (so an
    agent's own noise is not part of it). `dict_obs`: each observation is a Dict {"position": ...}.
    `masked`: each agent's observation is a Dict of its `position` and an `action_mask` drawn each step
    from the episode's seed (at least one legal move), and an illegal move raises; `masked="info"`: the
    same masks in each agent's info instead (`dict_obs` then gives the same observations without them)."""

    metadata: ClassVar[dict] = {"name": "meeting_agents_v0", "render_modes": []}
    render_mode = None

    def __init__(self, agents: int = 3, fault: str = "", leaving: float = 0.0, state: bool = False,
                 dict_obs: bool = False, masked: bool | str = False, late: int = 0,
                 returns: bool = False, fails_at: int = 0, dies_at: int = 0) -> None:
        self.fault = fault
        self.fails_at = fails_at
        self.dies_at = dies_at
        self._calls = 0
        self.leaving = leaving
        self.late = late
        self.returns = returns
        self._joins: dict[str, int] = {}
        self.dict_obs = dict_obs
        self.masked = masked
        self._masks = np.ones((agents, 3), np.int8)
        if state:
            self.state_space = gym.spaces.Box(-9.0, 9.0, (agents,), np.float32)
        self.possible_agents = [f"agent_{i}" for i in range(agents)]
        self.agents: list[str] = []
        self._obs_space = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
        self._action_space = gym.spaces.Discrete(3)
        self._rng = np.random.default_rng(0)
        self._pos = np.zeros(agents)
        self._t, self._limit = 0, 8

    def _infos(self, agents: list[str]) -> dict[str, dict]:
        """`masked="info"`: each agent's mask is its info's `action_mask`."""
        if self.masked != "info":
            return {agent: {} for agent in agents}
        return {agent: {"action_mask": self._masks[self.possible_agents.index(agent)].copy()}
                for agent in agents}

    def observation_space(self, agent: str) -> gym.Space:
        if self.masked is True:
            return gym.spaces.Dict({"position": self._obs_space, "action_mask": gym.spaces.MultiBinary(3)})
        return gym.spaces.Dict({"position": self._obs_space}) if self.dict_obs else self._obs_space

    def state(self) -> np.ndarray:
        if self.fault == "state_shape" and self._t >= 2:
            return np.append(self._pos, 0.0).astype(np.float32)
        return self._pos.astype(np.float32)

    def action_space(self, agent: str) -> gym.Space:
        if self.fault == "different_spaces" and agent == self.possible_agents[-1]:
            return gym.spaces.Discrete(4)
        return self._action_space

    def _observations(self) -> dict[str, np.ndarray]:
        total = self._pos.sum()
        others = (total - self._pos) / max(len(self._pos) - 1, 1)
        obs = {agent: np.array([self._pos[i], others[i], self._rng.normal()], np.float32).clip(-10, 10)
               for i, agent in enumerate(self.possible_agents)}
        if self.masked:
            self._masks = (self._rng.random(self._masks.shape) < 0.6).astype(np.int8)
            self._masks[np.arange(len(self._masks)), self._rng.integers(3, size=len(self._masks))] = 1
            if self.masked != "info":
                return {agent: {"position": o, "action_mask": self._masks[i].copy()}
                        for i, (agent, o) in enumerate(obs.items())}
        return {agent: {"position": o} for agent, o in obs.items()} if self.dict_obs else obs

    def reset(self, seed=None, options=None):
        self._rng = np.random.default_rng(seed)
        self._pos = self._rng.integers(-3, 4, len(self.possible_agents)).astype(np.float64)
        self._t, self._limit = 0, int(self._rng.integers(8, 15))
        late = self.possible_agents[len(self.possible_agents) - self.late:] if self.late else []
        self._joins = {agent: int(self._rng.integers(1, 6)) for agent in late}
        if self.returns or self.fault == "unseen":
            self._joins["agent_0"] = 4
        self.agents = [agent for agent in self.possible_agents if agent not in late]
        obs = {agent: o for agent, o in self._observations().items() if agent in self.agents}
        return obs, self._infos(self.agents)

    def step(self, actions):
        time.sleep(_UNSEEDED.uniform(0.0, 0.001))
        self._calls += 1
        if self._calls == self.fails_at:
            raise RuntimeError("the meeting lost its connection")
        if self._calls == self.dies_at and _first_to_get_here("HTSRL_TEST_DEATH_MARKER"):
            import os

            os._exit(9)
        live = list(self.agents)
        if set(actions) != set(live):
            raise ValueError(f"actions for {sorted(actions)}, but the agents in the episode are {live}")
        for i, agent in enumerate(self.possible_agents):
            if agent not in live:
                continue
            if not self._action_space.contains(actions[agent]):
                raise ValueError(f"action {actions[agent]!r} of {agent} is not in {self._action_space}")
            if not self._masks[i, int(actions[agent])]:
                raise ValueError(f"illegal action {actions[agent]} of {agent} under the mask "
                                 f"{self._masks[i].tolist()}")
            self._pos[i] = np.clip(self._pos[i] + int(actions[agent]) - 1, -9, 9)
        self._t += 1
        spread = float(self._pos.max() - self._pos.min())
        noise = {agent: float(self._rng.normal()) for agent in self.possible_agents}
        rewards = {agent: -spread / 10 + noise[agent] * 0.01 for agent in live}
        ended = self._t >= self._limit
        terminations = dict.fromkeys(live, ended and spread == 0)
        truncations = dict.fromkeys(live, ended and spread != 0)
        everyone = self._observations()
        infos = self._infos(live)
        if ended:
            self.agents = []
        else:
            for agent in self._leavers(live):
                terminations[agent] = True
                self.agents.remove(agent)
            self._join()
        # An agent that joined at this step gets its first observation (PettingZoo's parallel_api_test).
        # ... and its part of every other dict of the step (PettingZoo's parallel_api_test reads them).
        joined = [agent for agent in self.agents if agent not in live]
        for agent in joined:
            rewards[agent], terminations[agent], truncations[agent] = 0.0, False, False
        infos.update(self._infos(joined))
        seen = live if self.fault == "unseen" else live + joined
        obs = {agent: o for agent, o in everyone.items() if agent in seen}
        return obs, rewards, terminations, truncations, infos

    def _join(self) -> None:
        arriving = [agent for agent, t in self._joins.items() if t == self._t and agent not in self.agents]
        if self.fault == "stranger" and self._t == 2:
            self.agents.append("stranger_0")
            return
        self.agents = [agent for agent in self.possible_agents if agent in self.agents or agent in arriving]

    def _leavers(self, live: list[str]) -> list[str]:
        if (self.returns or self.fault == "unseen") and self._t == 2 and "agent_0" in live:
            return ["agent_0"]
        if self.fault == "vanishes" and self._t == 2:
            self.agents.remove("agent_0")
        draws = self._rng.random(len(live)) if self.leaving else np.ones(len(live))
        leavers = [agent for agent, draw in zip(live, draws) if draw < self.leaving]
        return leavers[:len(live) - 1]  # the episode goes on with one agent at least

    def close(self) -> None:
        pass

    @property
    def unwrapped(self) -> MeetingAgents:
        return self


def meeting_agents(agents: int = 3, fault: str = "", leaving: float = 0.0, state: bool = False,
                   dict_obs: bool = False, masked: bool | str = False, late: int = 0,
                   returns: bool = False, fails_at: int = 0, dies_at: int = 0) -> MeetingAgents:
    return MeetingAgents(agents, fault, leaving, state, dict_obs, masked, late, returns, fails_at, dies_at)
