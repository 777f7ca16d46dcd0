"""The env checker: one clear sentence per problem, for gymnasium envs and AsyncEnvs alike.

Every run checks its first env cheaply (one reset, one step) before its workers start;
`htsrl-aio check-env ENV` runs the full check (many random steps through episode ends). Both run the
env in a child process (when its factory can be sent there) and watch it from the loop: a call that
does not answer within --env-timeout, or that ends the process (os._exit, a crash in native code), is
one sentence too, and never hangs or kills the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np

from htsrl_aio.envs.action_masks import (
    MaskedObservation,
    MissingMask,
    has_mask_key,
    info_mask_key,
    mask_method,
)
from htsrl_aio.envs.async_env import close_env, is_async_env
from htsrl_aio.envs.factory import EnvFactory, EnvSpec, agent_observation, registering_package
from htsrl_aio.envs.parallel import (
    STATE_METHOD,
    MultiAgentError,
    arrival_problem,
    is_parallel_env,
)
from htsrl_aio.envs.spaces import EnvOutputError, NonFinite, UnsupportedSpace
from htsrl_aio.errors import ConfigError, EnvTimeout
from htsrl_aio.seeding import env_reset_seed

MAX_BLOCK_S = 0.05  # an AsyncEnv call that holds the loop longer than this stalls every other env
CONSTRUCTOR = "the env's constructor"
OnCall = Callable[[str, int], None]  # (the call about to be made, steps taken so far)


@dataclass
class CheckReport:
    name: str
    spec: EnvSpec | None = None
    problems: list[str] = field(default_factory=list)
    steps: int = 0
    action_masks: list[str] = field(default_factory=list)  # where the env exposes one
    masks_applied: bool = True  # --action-mask auto (not off)
    info_mask: str | None = None  # the info key that held a mask at reset or step

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def notes(self) -> list[str]:
        """What the env offers and how runs use it (not problems: the env trains as it is)."""
        return self._mask_notes() + self._code_image_notes()

    def _mask_notes(self) -> list[str]:
        if not self.action_masks:
            return []
        where = ", ".join(self.action_masks)
        if self.masks_applied:
            return [f"the env exposes an action mask ({where}), which runs apply: a masked action is never "
                    "sampled (--action-mask off ignores it)."]
        return [f"the env exposes an action mask ({where}), which --action-mask off ignores: every action "
                "can be sampled."]

    def _code_image_notes(self) -> list[str]:
        """MiniGrid's image is codes, not pixels: read as bytes, its objects are nearly alike."""
        env_id = self.name.rpartition(":")[2]
        if self.spec is None or registering_package(env_id) != "minigrid":
            return []
        if not any(f.key == "image" and f.scale != 1 for f in self.spec.policy_obs.fields):
            return []
        return [f"MiniGrid's 'image' holds object, colour and state codes, which runs read as bytes (x "
                "1/255: a key and a ball differ by 0.004); --env htsrl_aio.envs.minigrid:categories "
                f"--env-kwargs id={env_id} gives each code a bit of its own (MiniGrid-MemoryS7 is solved "
                "with it and not without, docs/learning.md)."]

    def saw_mask(self, where: str) -> None:
        if where not in self.action_masks:
            self.action_masks.append(where)


async def check_env(factory: EnvFactory, steps: int = 200, max_block_s: float = MAX_BLOCK_S,
                    timeout: float | None = None, isolated: bool = False) -> CheckReport:
    """Build one replica, check its interface, reset it and take `steps` random steps.

    With `timeout` (--env-timeout) or `isolated` the env runs in a child process, if its factory can be
    sent there (so a call that never returns cannot hold back Ctrl-C), and with `timeout` each call gets
    that long to answer.
    """
    if (timeout is not None or isolated) and _picklable(factory):
        return await _check_in_child(factory, steps, max_block_s, timeout)
    return await _check_here(factory, steps, max_block_s, timeout)


async def probe_env(factory: EnvFactory, timeout: float | None = None,
                    isolated: bool = False) -> tuple[EnvFactory, EnvSpec]:
    """The cheap check every run makes: one reset and one step; raise ConfigError on the first problem.
    Returns the factory the run builds its envs with (`factory`, or, when the probe found an action mask
    in the env's infos, one that moves it into the observation) and their spec."""
    report = await check_env(factory, steps=1, timeout=timeout, isolated=isolated)
    if not report.ok:
        raise ConfigError(f"env {report.name!r}: {report.problems[0]}")
    assert report.spec is not None
    if report.info_mask is not None and factory.action_mask == "auto" and factory.mask_info_key is None \
            and report.spec.obs.mask_key is None:
        masked = dataclasses.replace(factory, mask_info_key=report.info_mask)
        return await probe_env(masked, timeout, isolated)
    return factory, report.spec


async def _check_here(factory: EnvFactory, steps: int, max_block_s: float, timeout: float | None,
                      on_call: OnCall | None = None) -> CheckReport:
    report = CheckReport(factory.name, masks_applied=factory.action_mask == "auto")
    on_call = on_call or (lambda what, step: None)
    on_call(CONSTRUCTOR, 0)
    try:
        env = factory()
    except MultiAgentError as exc:
        report.problems.append(str(exc))
        return report
    except Exception as exc:
        report.problems.append(f"could not create the env: {type(exc).__name__}: {exc}.")
        return report
    try:
        report.spec = _check_interface(env, report.problems, factory.agent_id, factory.global_state,
                                       report.masks_applied)
        if report.spec is not None and report.spec.agents:
            _check_parallel_episodes(env, report, steps, on_call)
            if steps > 1 and report.ok:  # check-env: PettingZoo's own test too, on an env of its own
                _check_parallel_api(factory, report, on_call)
        elif report.spec is not None:
            _find_static_masks(env, report)
            await _check_episodes(env, report, steps, _AsyncCall(max_block_s, timeout), on_call)
    finally:
        on_call("close()", report.steps)  # a close() that hangs is named as such, not as the last step
        await close_env(env)
    if report.spec is not None and not report.spec.in_loop and factory.factory is not None:
        try:
            pickle.dumps(factory.factory)
        except Exception as exc:
            report.problems.append(
                f"the factory {factory.factory!r} cannot be sent to worker processes ({exc}); define it "
                "as a module-level function or pass 'package.module:factory'.")
    return report


def _picklable(factory: EnvFactory) -> bool:
    try:
        pickle.dumps(factory)
    except Exception:
        return False
    return True


@dataclass
class _Progress:
    """What the checking child is doing, as it last said: the call, steps taken, since when (loop time)."""

    what: str = CONSTRUCTOR
    step: int = 0
    since: float | None = None  # None while the child is still starting (importing)
    reported: bool = False  # the report has arrived: the child waits to be told to exit


async def _check_in_child(factory: EnvFactory, steps: int, max_block_s: float,
                          timeout: float | None) -> CheckReport:
    """Run `_check_here` in a child process that says before each call what it calls; kill it when a
    call takes longer than `timeout` (if given), and report its death if a call ends it."""
    from htsrl_aio.ipc.children import WatchedChild, close_children  # imports torch: only when needed

    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[CheckReport] = loop.create_future()
    progress, moved = _Progress(), asyncio.Event()

    def on_message(message: tuple[Any, ...]) -> None:
        if message[0] == "calling":
            progress.what, progress.step, progress.since = message[1], message[2], loop.time()
            moved.set()
        else:
            progress.reported = True
            if not outcome.done():
                outcome.set_result(message[1])

    def on_exit(code: int | None) -> None:
        if not outcome.done():
            outcome.set_result(CheckReport(factory.name, problems=[
                f"{progress.what} ended the env's process (exit code {code}, after {progress.step} steps) "
                "without raising an exception (os._exit, a signal, a crash in native code); raise an "
                "exception instead, which the run can report and --on-env-error restart can recover from."]))

    child = WatchedChild("htsrl-env-check", _check_child_main, (factory, steps, max_block_s, timeout),
                         on_message, on_exit)
    try:
        while not outcome.done():
            started = progress.since is not None and timeout is not None
            left = progress.since + timeout - loop.time() if started else None
            if left is not None and left <= 0:
                outcome.set_result(CheckReport(factory.name, problems=[
                    f"{progress.what} did not answer within --env-timeout {timeout:g} s (after "
                    f"{progress.step} steps); make the env answer sooner or raise --env-timeout."]))
                break
            moved.clear()
            waiter = asyncio.ensure_future(moved.wait())
            try:
                await asyncio.wait([outcome, waiter], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
    finally:
        child.request_close()
        if not progress.reported:
            child.process.kill()  # still checking (timed out, or we were cancelled): nothing to wait for
        await close_children([child])
    return outcome.result()


def _check_child_main(conn: Connection, factory: EnvFactory, steps: int, max_block_s: float,
                      timeout: float | None) -> None:
    def on_call(what: str, step: int) -> None:
        conn.send(("calling", what, step))

    report = asyncio.run(_check_here(factory, steps, max_block_s, timeout, on_call))
    conn.send(("report", report))
    conn.recv()  # ("close",): exit only once the parent has the report


def _check_interface(env: Any, problems: list[str], agent_id: bool = False,
                     global_state: bool = False, masks: bool = True) -> EnvSpec | None:
    if isinstance(env, gym.vector.VectorEnv) or hasattr(env, "single_observation_space"):
        problems.append(f"the factory returned a vector env ({type(env).__name__}); return one env: "
                        "htsrl-aio makes --num-envs replicas of it itself.")
        return None
    if is_parallel_env(env):
        try:
            return EnvSpec.of_parallel_env(env, agent_id, global_state, masks)
        except (MultiAgentError, UnsupportedSpace) as exc:
            problems.append(str(exc))
            return None
    if hasattr(env, "possible_agents"):
        problems.append(f"the factory returned {type(env).__name__}, which has possible_agents but is "
                        "neither a PettingZoo ParallelEnv nor an AEC env; return a ParallelEnv (PettingZoo's "
                        "Parallel API).")
        return None
    if not (hasattr(env, "observation_space") and hasattr(env, "action_space")):
        problems.append(f"the factory returned {type(env).__name__}, which is neither a gymnasium env nor "
                        "an AsyncEnv (no observation_space/action_space).")
        return None
    try:
        in_loop = is_async_env(env)
    except TypeError as exc:
        problems.append(f"{exc}.")
        return None
    obs_space, act_space = env.observation_space, env.action_space
    for name, space in (("observation_space", obs_space), ("action_space", act_space)):
        if not isinstance(space, gym.spaces.Space):
            problems.append(_foreign_space(name, space))
    if problems:
        return None
    try:
        return EnvSpec.from_spaces(obs_space, act_space, in_loop, masks)
    except UnsupportedSpace as exc:
        problems.append(str(exc))
        return None


def _find_static_masks(env: Any, report: CheckReport) -> None:
    """Action masks the env declares: sb3-contrib's `action_masks()` method, an `action_mask` key of a
    Dict observation (those in an info are seen as the env steps)."""
    if mask_method(env) is not None:
        report.saw_mask("an action_masks() method")
    if has_mask_key(env.observation_space) and not isinstance(env, MaskedObservation):  # not the env's own
        report.saw_mask("the observation key 'action_mask'")


def _find_info_masks(info: Any, report: CheckReport) -> None:
    if (key := info_mask_key(info)) is not None:
        report.saw_mask(f"info[{key!r}]")
        report.info_mask = report.info_mask or key


def _foreign_space(name: str, space: Any) -> str:
    """Why a space that is not a gymnasium space is refused, and the fix."""
    module = type(space).__module__.split(".")[0]
    if module == "gym":
        return (f"{name} is a space of the old `gym` package ({space}); the env uses the old gym API: "
                "port it to gymnasium >= 0.26 in a factory that converts its spaces to gymnasium.spaces and "
                "its reset()/step() to the new API (shimmy's GymV26CompatibilityV0 does that for many old "
                "envs, not all).")
    return (f"{name} is {space!r} ({type(space).__module__}.{type(space).__name__}), not a gymnasium space; "
            "return a gymnasium.spaces space from a single-agent gymnasium env (vector and multi-agent "
            "envs are not accepted: give a factory of one env).")


async def _check_episodes(env: Any, report: CheckReport, steps: int, call: _AsyncCall,
                          on_call: OnCall) -> None:
    spec = report.spec
    assert spec is not None
    in_loop = spec.in_loop
    actions = np.random.default_rng(0)
    needs_reset = True
    for episode in range(max(steps, 1)):
        what = "reset()" if needs_reset else "step()"
        try:
            if needs_reset:
                seed = env_reset_seed(0, 0, episode)  # the kind of seed a run resets with
                on_call(what, report.steps)
                result = await call.run(env.reset(seed=seed), what) if in_loop else env.reset(seed=seed)
                if not _check_reset(result, spec, report.problems):
                    break
                _find_info_masks(result[1], report)
            what = "step()"
            action = _random_action(spec, result[0], actions, result[-1])
            on_call(what, report.steps)
            result = await call.run(env.step(action), what) if in_loop else env.step(action)
        except (EnvTimeout, MissingMask) as exc:
            report.problems.append(f"{exc}.")
            break
        except Exception as exc:
            report.problems.append(f"{what} raised {type(exc).__name__}: {exc}.")
            break
        report.steps += 1
        if not _check_step(result, spec, report.problems):
            break
        _find_info_masks(result[4], report)
        needs_reset = bool(result[2] or result[3])
    if in_loop and call.problem:
        report.problems.append(call.problem)


def _check_parallel_episodes(env: Any, report: CheckReport, steps: int, on_call: OnCall) -> None:
    """`_check_episodes` for a ParallelEnv: every agent's part of each reset and step is checked as a
    single-agent env's would be, and an agent that enters the episode must be a possible agent with an
    observation."""
    spec = report.spec
    assert spec is not None
    actions = np.random.default_rng(0)
    needs_reset = True
    latest: dict[str, Any] = {}
    for episode in range(max(steps, 1)):
        what = "reset()" if needs_reset else "step()"
        try:
            if needs_reset:
                on_call(what, report.steps)
                started = env.reset(seed=env_reset_seed(0, 0, episode))
                if not _check_arrivals(env, spec, set(), started, what, report.problems):
                    break
                present = [agent for agent in spec.agents if agent in env.agents]
                reset = _by_agent(spec, started, 2, report.problems, present)
                if reset is None or not _each_agent(spec, present, reset, _check_reset, report.problems) \
                        or not _check_state(env, spec, what, report.problems):
                    break
                latest = {agent: part[0] for agent, part in zip(present, reset)}
                infos = _agent_infos(started[1], present, report)
            what = "step()"
            on_call(what, report.steps)
            live = [agent for agent in spec.agents if agent in env.agents]  # agents that left are not asked
            result = env.step({agent: _random_action(spec, latest[agent], actions, infos.get(agent))
                               for agent in live})
        except MissingMask as exc:
            report.problems.append(f"{exc}.")
            break
        except Exception as exc:
            report.problems.append(f"{what} raised {type(exc).__name__}: {exc}.")
            break
        report.steps += 1
        if not _check_arrivals(env, spec, set(live), result, what, report.problems):
            break
        step = _by_agent(spec, result, 5, report.problems, live)
        if step is None or not _each_agent(spec, live, step, _check_step, report.problems) \
                or not _check_state(env, spec, what, report.problems):
            break
        latest.update((agent, part[0]) for agent, part in zip(live, step))
        # An agent that joined took no action: its first observation is all of its part of the step.
        joined = [agent for agent in spec.agents if agent in env.agents and agent not in live]
        first = [(agent_observation(spec, result[0], agent),) for agent in joined]
        if not _each_agent(spec, joined, first, _check_first_obs, report.problems):
            break
        latest.update((agent, part[0]) for agent, part in zip(joined, first))
        infos = _agent_infos(result[4], live + joined, report)
        needs_reset = not env.agents


def _agent_infos(infos: Any, agents: Sequence[str], report: CheckReport) -> dict[str, Any]:
    """The info of each of `agents` in a ParallelEnv's `infos`, each searched for an action mask."""
    found = {agent: infos.get(agent) if isinstance(infos, dict) else None for agent in agents}
    for info in found.values():
        _find_info_masks(info, report)
    return found


def _check_arrivals(env: Any, spec: EnvSpec, before: set[str], result: Any, call: str,
                    problems: list[str]) -> bool:
    """The agents that entered the episode at `call` can be rows (as agent_group.AgentGroup requires);
    False with the problem if not."""
    obs = result[0] if isinstance(result, tuple) and result else None
    if problem := arrival_problem(env.agents, before, spec.agents, obs, call):
        problems.append(problem)
        return False
    return True


def _random_action(spec: EnvSpec, obs: Any, rng: np.random.Generator, info: Any = None) -> Any:
    """A random action for `obs` as env.step takes it: among the legal ones when actions are masked (by
    the observation's mask, or by one in `info` that the run will move into the observation)."""
    if spec.obs.mask_key is not None:
        mask = spec.obs.encode(obs)[spec.obs.mask_key]
    else:
        mask = _usable_mask(spec, info[key]) if (key := info_mask_key(info)) is not None else None
    return spec.action.to_env(spec.action.random(rng, mask))


def _usable_mask(spec: EnvSpec, mask: Any) -> np.ndarray | None:
    """An info's mask as bits when it fits the actions with a legal one per choice, else None (the
    probe with the mask in the observation names what is wrong with it)."""
    bits = np.asarray(mask)
    sizes = spec.action.sizes
    if spec.action.kind not in ("discrete", "multi_discrete") or bits.shape != (sum(sizes),):
        return None
    if not all(group.any() for group in np.split(bits != 0, np.cumsum(sizes[:-1]))):
        return None
    return bits != 0


def _check_state(env: Any, spec: EnvSpec, where: str, problems: list[str]) -> bool:
    """--critic global reading the env's state(): after `where`, it has state_space's shape and finite
    values (a state of the agents' observations is theirs, checked with them)."""
    if spec.state_source != STATE_METHOD:
        return True
    assert spec.state_space is not None
    try:
        state = np.asarray(env.state())
    except Exception as exc:
        problems.append(f"state() after {where} raised {type(exc).__name__}: {exc}.")
        return False
    if state.shape != spec.state_space.shape:
        problems.append(f"state() after {where} returned shape {state.shape} but state_space says "
                        f"{spec.state_space.shape}; make them agree (--critic global reads it).")
        return False
    if state.dtype.kind in "fc" and not np.isfinite(state).all():
        problems.append(f"{NonFinite(f'state() after {where}', 'state')}.")
        return False
    return True


def _by_agent(spec: EnvSpec, result: Any, size: int, problems: list[str],
              agents: Sequence[str] | None = None) -> list[tuple] | None:
    """A ParallelEnv's reset (size 2) or step (size 5) result as one single-agent tuple per agent of
    `agents` (those in the episode; every agent by default), the observation as the agent's row stores
    it, or None with the problem."""
    agents = spec.agents if agents is None else agents
    what = "reset() of a ParallelEnv must return (observations, infos)" if size == 2 else \
        "step() of a ParallelEnv must return (observations, rewards, terminations, truncations, infos)"
    if not (isinstance(result, tuple) and len(result) == size and all(isinstance(r, dict) for r in result)):
        problems.append(f"{what}, dicts by agent; it returned {_describe(result)}.")
        return None
    if missing := [agent for agent in agents if agent not in result[0]]:
        problems.append(f"{what.split(' of ')[0]} returned no observation for agents {missing}; every agent "
                        "of the episode needs one.")
        return None
    rows = []
    for agent in agents:
        obs = agent_observation(spec, result[0], agent)
        flags = tuple(bool(part.get(agent, False)) for part in result[2:4])
        rows.append((obs, {}) if size == 2 else (obs, result[1].get(agent), *flags, {}))
    return rows


def _each_agent(spec: EnvSpec, agents: Sequence[str], results: list[tuple],
                check: Callable[[Any, EnvSpec, list[str]], bool], problems: list[str]) -> bool:
    """`check` each agent's result as a single-agent env's; a problem it finds names the agent."""
    for agent, result in zip(agents, results):
        found = len(problems)
        if not check(result, spec, problems):
            problems[found:] = [f"agent {agent!r}: {problem}" for problem in problems[found:]]
            return False
    return True


def _check_parallel_api(factory: EnvFactory, report: CheckReport, on_call: OnCall) -> None:
    """PettingZoo's `parallel_api_test`, the reference for what a valid ParallelEnv does."""
    from pettingzoo.test import parallel_api_test

    on_call("PettingZoo's parallel_api_test", report.steps)
    # Its random actions follow a mask in the observation only: one found in the infos is put there, as
    # runs put it.
    if report.info_mask is not None and factory.action_mask == "auto":
        factory = dataclasses.replace(factory, mask_info_key=report.info_mask)
    env = factory()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its verdict; the report says it
            parallel_api_test(env, num_cycles=100)
    except Exception as exc:
        report.problems.append(f"PettingZoo's parallel_api_test failed: {type(exc).__name__}: {exc}.")
    finally:
        env.close()


def _check_reset(result: Any, spec: EnvSpec, problems: list[str]) -> bool:
    if not (isinstance(result, tuple) and len(result) == 2):
        problems.append(f"reset() must return (obs, info) as in gymnasium >= 0.26; it returned "
                        f"{_describe(result)}.")
        return False
    return _check_obs(result[0], spec, "reset()", problems)


def _check_first_obs(result: tuple[Any], spec: EnvSpec, problems: list[str]) -> bool:
    """The observation of an agent that joined an episode under way, at the step it joined."""
    return _check_obs(result[0], spec, "step()", problems)


def _check_step(result: Any, spec: EnvSpec, problems: list[str]) -> bool:
    if isinstance(result, tuple) and len(result) == 4:
        problems.append("step() returned 4 values, the old gym API (obs, reward, done, info); return "
                        "(obs, reward, terminated, truncated, info) as in gymnasium >= 0.26.")
        return False
    if not (isinstance(result, tuple) and len(result) == 5):
        problems.append(f"step() must return (obs, reward, terminated, truncated, info); it returned "
                        f"{_describe(result)}.")
        return False
    obs, reward, terminated, truncated, _info = result
    ok = _check_obs(obs, spec, "step()", problems)
    if not isinstance(reward, (int, float, np.integer, np.floating)) or isinstance(reward, bool):
        problems.append(f"step() returned a reward of type {type(reward).__name__}; return a float.")
        ok = False
    elif not math.isfinite(reward):
        problems.append(f"{NonFinite('step()', f'reward ({float(reward)})')}.")
        ok = False
    for flag, value in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(value, (bool, np.bool_)):
            problems.append(f"step() returned {flag} of type {type(value).__name__}; return a bool.")
            ok = False
    return ok


def _check_obs(obs: Any, spec: EnvSpec, where: str, problems: list[str]) -> bool:
    layout = spec.policy_obs  # with --critic global, the rows' state is checked by the run itself
    try:
        layout.encode(obs, where)
    except EnvOutputError as exc:  # NaN/Inf, or a value storing would change: a sentence with its fix
        problems.append(f"{exc}.")
        return False
    except ValueError as exc:
        problems.append(f"{exc}; make them agree.")
        return False
    for f in layout.fields:
        dtype = np.asarray(layout.leaf(obs, f, where)).dtype
        if f.transform != "one_hot" and dtype != f.raw_dtype:
            problems.append(f"{where} returned {f.named} of dtype {dtype} but its observation_space says "
                            f"{f.raw_dtype}; cast it (e.g. obs.astype(np.{f.raw_dtype})).")
            return False
    return True


def _describe(value: Any) -> str:
    return f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__


class _AsyncCall:
    """Awaits an AsyncEnv call while measuring the longest stretch it held the loop without awaiting,
    within `timeout` seconds if given."""

    def __init__(self, max_block_s: float, timeout: float | None = None) -> None:
        self.max_block_s = max_block_s
        self.timeout = timeout
        self.problem: str | None = None

    async def run(self, call: Any, what: str) -> Any:
        task = asyncio.ensure_future(call)
        longest = 0.0
        start = last = time.perf_counter()
        while not task.done():
            # Each pass of this loop is one event-loop iteration; a long gap is the env not yielding.
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
            if self.timeout is not None and now - start > self.timeout and not task.done():
                task.cancel()
                raise EnvTimeout(what, self.timeout)
        if longest > self.max_block_s and self.problem is None:
            self.problem = (f"{what} blocked the event loop for {1000 * longest:.0f} ms without awaiting; "
                            "await its I/O, or move blocking work to asyncio.to_thread.")
        return task.result()
