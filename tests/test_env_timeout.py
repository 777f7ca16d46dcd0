"""--env-timeout: a reset or step with no answer in time is an env failure, in worker processes and on
the loop alike; the start-up probe survives an env that hangs or ends its process."""

import json
from pathlib import Path

import pytest

from htsrl_aio import ConfigError, EnvError, TrainConfig, train

# The process backend hosts plain envs; the loop backend hosts AsyncEnvs.
HANGS_ONCE = {"process": "envs_for_tests:hangs_once_cartpole",
              "loop": "envs_for_tests:async_hangs_once_cartpole"}


def config(run_dir: Path, env: str, **overrides) -> TrainConfig:
    base = {"env": env, "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * 6, "workers": 2,
            "logdir": str(run_dir), "progress": False, "env_timeout": 1.0}
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def hang_marker(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HTSRL_TEST_HANG_MARKER", str(tmp_path / "hung"))


@pytest.mark.parametrize("backend,message", [
    ("process", r"^env \d of 'envs_for_tests:hangs_once_cartpole' did not answer its step \(rollout \d+, "
                r"step \d+\) within --env-timeout 1 s, so env worker \d \(envs \d-\d\) was killed; make the "
                r"env answer sooner, raise --env-timeout, or pass --on-env-error restart to replace it\.$"),
    ("loop", r"^env \d of 'envs_for_tests:async_hangs_once_cartpole' failed \(rollout \d+, step \d+\): "
             r"EnvTimeout: step\(\) did not answer within --env-timeout 1 s; make the env answer sooner"),
], ids=["process", "loop"])
def test_a_step_that_never_answers_stops_the_run_in_one_sentence(run_dir, no_leaks, hang_marker, backend,
                                                                  message):
    with pytest.raises(EnvError, match=message):
        train(config(run_dir, HANGS_ONCE[backend]))
    assert (run_dir / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend,replaced", [("process", 2), ("loop", 1)])
def test_with_restart_a_step_that_never_answers_is_replaced_like_a_crash(run_dir, no_leaks, hang_marker,
                                                                         backend, replaced):
    summary = train(config(run_dir, HANGS_ONCE[backend], on_env_error="restart"))
    assert summary["updates"] == 6
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # The process backend kills the stuck env's worker, which hosted 2 of the 4 envs.
    assert rows[-1]["env_restarts"] == replaced
    assert "did not answer" in (run_dir / "error.log").read_text()


@pytest.mark.parametrize("env,message", [
    ("hangs_at_first_step", r"step\(\) did not answer within --env-timeout 1 s \(after 0 steps\); make "
                            r"the env answer sooner or raise --env-timeout\."),
    ("exits_at_first_step", r"step\(\) ended the env's process \(exit code 3, after 0 steps\) without "
                            r"raising an exception"),
], ids=["hangs", "exits"])
def test_the_start_up_probe_survives_an_env_that_hangs_or_exits(run_dir, env, message):
    with pytest.raises(ConfigError, match=rf"^env 'envs_for_tests:{env}': {message}"):
        train(config(run_dir, f"envs_for_tests:{env}"))
    assert not run_dir.exists()  # refused before the run directory is made


@pytest.mark.parametrize("on_env_error", ["stop", pytest.param("restart", marks=pytest.mark.slow)])
def test_a_worker_that_exits_while_creating_its_envs_ends_the_start_in_one_sentence(run_dir, no_leaks,
                                                                                      on_env_error):
    with pytest.raises(EnvError, match=r"^env worker \d \(envs \d-\d\) of 'envs_for_tests:exits_in_workers' "
                                       r"exited with code 3 before its envs were built, without raising an "
                                       r"exception; make creating the env work in a fresh process"):
        train(config(run_dir, "envs_for_tests:exits_in_workers", on_env_error=on_env_error))


@pytest.mark.parametrize("on_env_error", ["stop", pytest.param("restart", marks=pytest.mark.slow)])
def test_an_env_never_done_being_created_ends_the_start_at_the_timeout(run_dir, no_leaks, on_env_error):
    with pytest.raises(EnvError, match=r"^env worker \d \(envs \d-\d\) of 'envs_for_tests:hangs_in_workers' "
                                       r"did not build its envs within --env-timeout 1 s, so it was killed; "
                                       r"make the env's constructor return sooner or raise --env-timeout\.$"):
        train(config(run_dir, "envs_for_tests:hangs_in_workers", on_env_error=on_env_error))


def test_a_plain_env_on_the_loop_backend_is_refused_where_a_hang_could_not_be_stopped(run_dir):
    # A plain env's step holds the event loop: a hanging one could be stopped neither by --env-timeout
    # nor by Ctrl-C (both are handled on the loop), so the run is refused before anything starts.
    refused = (r"^--env-backend loop would step 'CartPole-v1', a plain \(not async\) env, inside the event "
               r"loop, where neither --env-timeout nor Ctrl-C can stop a step that hangs; use --env-backend "
               r"process \(the default for plain envs\), or --env-timeout 0 to step it in the loop unbounded "
               r"\(debugging\)\.$")
    with pytest.raises(ConfigError, match=refused):
        train(config(run_dir, "CartPole-v1", env_backend="loop"))
    assert not run_dir.exists()
