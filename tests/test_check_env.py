"""The env checker: one sentence per problem, for gymnasium envs and AsyncEnvs."""

import functools
import re
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from htsrl_aio import ConfigError, EnvError, TrainConfig, train
from htsrl_aio.envs import check_env, resolve_env


class FaultyEnv(gym.Env):
    """A well-behaved env unless told to get one thing wrong."""

    def __init__(self, fault: str = "") -> None:
        self.fault = fault
        self.observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        if fault == "dict_obs_missing_key":
            self.observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (4,), np.float32),
                                                      "goal": gym.spaces.Discrete(3)})
        if fault == "sequence_obs":
            self.observation_space = gym.spaces.Sequence(gym.spaces.Box(-1, 1, (4,), np.float32))
        self.action_space = gym.spaces.Discrete(2)
        if fault == "dict_action":
            self.action_space = gym.spaces.Dict({"move": gym.spaces.Discrete(2)})
        self.t = 0

    def _obs(self):
        if self.fault == "shape":
            return np.zeros(5, np.float32)
        if self.fault == "dict_obs_missing_key":
            return {"x": np.zeros(4, np.float32)}
        if self.fault == "nan_obs" and self.t == 3:
            return np.array([0, np.nan, 0, 0], np.float32)
        return np.zeros(4, np.float64 if self.fault == "dtype" else np.float32)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs() if self.fault == "reset_obs_only" else (self._obs(), {})

    def step(self, action):
        self.t += 1
        if self.fault == "raises":
            raise ConnectionError("simulator unreachable")
        done = self.t >= 10
        if self.fault == "four_tuple":
            return self._obs(), 1.0, done, {}
        reward = np.ones(1) if self.fault == "reward_array" else 1.0
        reward = float("inf") if self.fault == "inf_reward" else reward
        terminated = int(done) if self.fault == "int_flag" else done
        return self._obs(), reward, terminated, False, {}


def faulty(fault: str = "") -> FaultyEnv:
    return FaultyEnv(fault)


class BlockingAsyncEnv:
    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    async def reset(self, *, seed=None, options=None):
        return np.zeros(4, np.float32), {}

    async def step(self, action):
        time.sleep(0.12)  # the mistake being checked: blocking I/O inside a coroutine
        return np.zeros(4, np.float32), 1.0, True, False, {}


async def problems_of(env) -> list[str]:
    return (await check_env(resolve_env(env), steps=30)).problems


@pytest.mark.parametrize("fault,message", [
    ("sequence_obs", r"observation_space is Sequence\(.*\); htsrl-aio learns from Box, Discrete, "
                     r"MultiDiscrete, MultiBinary, or Dict/Tuple of those"),
    ("dict_action", r"action_space is Dict\(.*\); htsrl-aio samples Discrete, MultiDiscrete, MultiBinary or "
                    r"Box \(float\) actions"),
    ("dict_obs_missing_key", r"reset\(\) returned an observation without 'goal', which its observation_space "
                             r"has"),
    ("reset_obs_only", r"reset\(\) must return \(obs, info\) as in gymnasium >= 0.26; it returned ndarray"),
    ("shape", r"reset\(\) returned an observation of shape \(5,\) but its observation_space says \(4,\)"),
    ("dtype", r"reset\(\) returned an observation of dtype float64 but its observation_space says float32; "
              r"cast it"),
    ("four_tuple", r"step\(\) returned 4 values, the old gym API \(obs, reward, done, info\)"),
    ("reward_array", r"step\(\) returned a reward of type ndarray; return a float"),
    ("int_flag", r"step\(\) returned terminated of type int; return a bool"),
    ("raises", r"step\(\) raised ConnectionError: simulator unreachable\.$"),
    ("nan_obs", r"step\(\) returned a non-finite observation; make the env return finite numbers"),
    ("inf_reward", r"step\(\) returned a non-finite reward \(inf\); make the env return finite numbers"),
])
async def test_each_problem_gets_one_sentence(fault, message):
    problems = await problems_of(functools.partial(faulty, fault))
    assert len(problems) == 1
    assert re.match(message, problems[0]), problems[0]


async def test_a_good_env_passes_through_many_episodes():
    report = await check_env(resolve_env(faulty), steps=30)
    assert report.ok and report.steps == 30 and report.spec.action.sizes == (2,)


async def test_factory_returning_something_else():
    assert await problems_of(lambda: object()) == [
        "the factory returned object, which is neither a gymnasium env nor an AsyncEnv "
        "(no observation_space/action_space)."]


async def test_half_async_env():
    from envs_for_tests import half_async

    assert (await problems_of(half_async))[0].startswith("reset() is a coroutine but step() is not")


async def test_a_step_that_blocks_the_loop_is_named():
    problems = await problems_of(BlockingAsyncEnv)
    assert len(problems) == 1
    assert re.match(r"step\(\) blocked the event loop for \d+ ms without awaiting; await its "
                                  r"I/O, or move blocking work to asyncio.to_thread.", problems[0])


async def test_unpicklable_factory_of_a_process_env():
    problems = await problems_of(lambda: FaultyEnv())
    assert len(problems) == 1 and "cannot be sent to worker processes" in problems[0]


def test_every_run_checks_its_first_env_before_starting(tmp_path):
    with pytest.raises(ConfigError, match=r"env .*: step\(\) returned 4 values"):
        train(TrainConfig(env=functools.partial(faulty, "four_tuple"), num_envs=2, rollout=8,
                          total_steps=16, logdir=str(tmp_path / "run"), progress=False))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("env,code,output", [
    ("CartPole-v1", 0, "CartPole-v1: ok (50 steps; observations (4,) float32, 2 actions; runs in worker "
                       "processes)."),
    ("envs_for_tests:half_async", 1, "envs_for_tests:half_async: reset() is a coroutine but step() is not"),
    ("envs_for_tests:hangs_at_first_step", 1,
     "envs_for_tests:hangs_at_first_step: step() did not answer within --env-timeout 1 s (after 0 steps); "
     "make the env answer sooner"),
    ("envs_for_tests:exits_at_first_step", 1, "envs_for_tests:exits_at_first_step: step() ended the env's "
                                              "process (exit code 3, after 0 steps) without raising"),
    ("envs_for_tests:hangs_in_close_cartpole", 1, "envs_for_tests:hangs_in_close_cartpole: close() did not "
                                                  "answer within --env-timeout 1 s (after 50 steps)"),
])
def test_check_env_command(env, code, output):
    proc = subprocess.run([sys.executable, "-m", "htsrl_aio.cli", "check-env", env, "--steps", "50",
                           "--env-timeout", "1"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith(output)
    assert ("train with --memory lstm" in proc.stdout) == (code == 0)  # the advice for partial views


BAD_OBSERVATIONS = {
    "multi_discrete_out_of_range": r"holding 5 at index 0, outside its categories 0\.\.2; return values its "
                                   r"observation_space contains",
    "multi_discrete_negative": r"holding -1 at index 1, outside its categories 0\.\.2",
    "discrete_negative": r"holding -2, outside its categories 0\.\.4",
    "multi_binary_not_0_or_1": r"holding 7 at index 0, which is not 0 or 1; return only 0s and 1s",
    "float_frame": r"holding 0\.5 at index \(0, 0, 0\), a float32 where its observation_space says uint8",
    "int64_frame_that_wraps": r"holding 765 at index \(0, 0, 0\), which does not fit its uint8 storage "
                              r"\(0\.\.255\) and would wrap around",
}


@pytest.mark.parametrize("fault", BAD_OBSERVATIONS)
async def test_check_env_names_observations_storing_would_change(fault):
    from envs_for_tests import bad_observation_env

    problems = await problems_of(functools.partial(bad_observation_env, fault))
    assert len(problems) == 1
    assert re.match(rf"step\(\) returned an observation {BAD_OBSERVATIONS[fault]}", problems[0]), problems[0]


def test_check_env_command_fails_an_out_of_range_multi_discrete():
    proc = subprocess.run([sys.executable, "-m", "htsrl_aio.cli", "check-env",
                           "envs_for_tests:bad_observation_env", "--env-kwargs",
                           "fault=multi_discrete_out_of_range", "--steps", "50"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("envs_for_tests:bad_observation_env: step() returned an observation "
                                  "holding 5 at index 0, outside its categories 0..2"), proc.stdout


@pytest.mark.parametrize("fault", ["multi_discrete_out_of_range", *(  # the rest alike: the slow tier
    pytest.param(f, marks=pytest.mark.slow) for f in ("multi_binary_not_0_or_1", "float_frame",
                                                      "int64_frame_that_wraps"))])
def test_a_run_meeting_an_observation_storing_would_change_stops_in_one_sentence(tmp_path, no_leaks, fault):
    with pytest.raises(EnvError) as raised:
        train(TrainConfig(env="envs_for_tests:bad_observation_env", env_kwargs={"fault": fault}, num_envs=2,
                          rollout=8, total_steps=32, workers=1, logdir=str(tmp_path / "run"), progress=False))
    message = str(raised.value)
    assert re.match(r"env \d of 'envs_for_tests:bad_observation_env.*' failed: BadObservation: "
                    rf"step\(\) returned an observation at step 3 of episode 0 {BAD_OBSERVATIONS[fault]}",
                    message), message
    assert "\n" not in message


def vector_cartpole():
    return gym.make_vec("CartPole-v1", num_envs=2)


async def test_vector_envs_are_refused_with_what_to_give_instead():
    problems = await problems_of(vector_cartpole)
    assert len(problems) == 1 and problems[0].startswith("the factory returned a vector env")
    assert "return one env: htsrl-aio makes --num-envs replicas of it itself" in problems[0]


@pytest.mark.parametrize("env_id", ["MiniGrid-Empty-5x5-v0", "Pendulum-v1"])
async def test_spaces_of_real_packages_pass(env_id):
    report = await check_env(resolve_env(env_id), steps=50)
    assert report.ok, report.problems


@pytest.mark.parametrize("steps", ["-5", "0"])
def test_check_env_refuses_a_step_count_below_one(capsys, steps):
    from htsrl_aio.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check-env", "CartPole-v1", "--steps", steps])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["htsrl-aio: error: --steps must be a positive number of random steps to take, got "
                   f"{steps}."]


@pytest.mark.parametrize("env,where", [
    ("envs_for_tests:masked_env kind=method", "an action_masks() method"),
    ("envs_for_tests:masked_env kind=key", "the observation key 'action_mask'"),
    ("envs_for_tests:masked_env kind=info", "info['action_mask']"),
    ("envs_for_tests:masked_env kind=legal", "info['legal_action_mask']"),
    ("Taxi-v4", "info['action_mask']"),
])
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_check_env_says_when_an_env_exposes_an_action_mask(capsys, env, where, mode):
    from htsrl_aio.cli import main as cli_main

    env_id, *kwargs = env.split()
    env_kwargs = ["--env-kwargs", *kwargs] if kwargs else []
    assert cli_main(["check-env", env_id, "--steps", "5", "--action-mask", mode, *env_kwargs]) == 0
    out = capsys.readouterr().out
    if mode == "auto":
        assert (f"note: the env exposes an action mask ({where}), which runs apply: a masked action is never "
                "sampled (--action-mask off ignores it).") in out
    else:
        assert (f"note: the env exposes an action mask ({where}), which --action-mask off ignores: every "
                "action can be sampled.") in out
    assert ": ok (" in out


def test_check_env_says_nothing_of_masks_when_there_are_none(capsys):
    from htsrl_aio.cli import main as cli_main

    assert cli_main(["check-env", "CartPole-v1", "--steps", "5"]) == 0
    assert "action mask" not in capsys.readouterr().out


def test_check_env_takes_the_frame_flags_of_train(capsys):
    from htsrl_aio.cli import main as cli_main

    assert cli_main(["check-env", "envs_for_tests:screen_and_vars", "--grayscale", "--frame-stack", "2",
                     "--steps", "12"]) == 0
    assert "screen (2, 12, 16) uint8" in capsys.readouterr().out


@pytest.mark.parametrize("env_id,hint", [
    ("popgym-RepeatPreviousEasy-v0", "If a package registers it when imported, name it: --env "
                                     "<package>:popgym-RepeatPreviousEasy-v0."),
    ("MiniWorld-Hallway-v0", "If a package registers it when imported, name it: --env "
                             "<package>:MiniWorld-Hallway-v0."),
    ("envs_for_tests-Foo-v0", "If package 'envs_for_tests' registers it when imported, name it: --env "
                              "envs_for_tests:envs_for_tests-Foo-v0."),
    ("ALE/Breakout-ram-v5", "ale-py has no -ram ids: RAM observations come from gymnasium's own ALE env, "
                            "--env ale_py:ALE/Breakout-v5 --env-kwargs obs_type=ram."),
])
def test_unknown_ids_hint_at_the_package_that_registers_them(env_id, hint):
    with pytest.raises(ConfigError) as error:
        resolve_env(env_id)
    message = str(error.value)
    assert message.startswith(f"unknown env id {env_id!r}") and message.endswith(hint)
    assert "Breakout-v4" not in message and "installed" not in message


def test_an_old_gym_space_is_not_promised_a_fix_that_may_fail():
    from htsrl_aio.envs.check import _foreign_space

    old_box = type("Box", (), {"__module__": "gym.spaces.box", "__repr__": lambda self: "Box(4,)"})()
    message = _foreign_space("observation_space", old_box)
    assert "port it to gymnasium >= 0.26" in message and "for many old envs, not all" in message


def test_actions_bounded_beyond_float32_are_unbounded_without_a_numpy_warning():
    """EnvPool's ViZDoom tasks (envpool:Basic-v1) bound their float64 actions by DBL_MIN and DBL_MAX."""
    import warnings

    from htsrl_aio.envs.spaces import ActionSpec

    space = gym.spaces.Box(np.finfo(np.float64).tiny, np.finfo(np.float64).max, (3,), np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = ActionSpec.from_space(space)
    assert np.all(spec.high == np.inf) and np.all(spec.low == 0)


def test_frame_flags_on_gfootball_ids_are_one_sentence():
    with pytest.raises(ConfigError, match=r"^--frame-size, --grayscale and --frame-stack do not apply to "
                                          r"gfootball/academy_empty_goal_close: .*; drop them\.$"):
        resolve_env("gfootball/academy_empty_goal_close", TrainConfig(frame_stack=2))
