"""--on-env-error restart: a failed env, or a dead worker, is re-created and the run goes on."""

import json
import os
import signal
from pathlib import Path

import pytest
from harness import alive, as_if_crashed_after

from htsrl_aio import EnvError, TrainConfig, resume, train
from htsrl_aio.backends.replica import MAX_RESTARTS_PER_ENV


def restarting(run_dir: Path, env: str, **overrides) -> TrainConfig:
    base = {"env": env, "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * 20, "workers": 2,
            "logdir": str(run_dir), "progress": False, "on_env_error": "restart"}
    return TrainConfig(**{**base, **overrides})


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_env_that_raises_is_recreated_and_counted(run_dir, no_leaks, caplog):
    # raising_cartpole fails on its 101st step and on every one after: each env makes 320 step calls,
    # so each fails at calls 101, 202 and 303 of its successive incarnations: 3 restarts x 4 envs.
    summary = train(restarting(run_dir, "envs_for_tests:raising_cartpole"))
    assert summary["updates"] == 20
    assert rows(run_dir)[-1]["env_restarts"] == 12
    assert [r["env_restarts"] for r in rows(run_dir)] == sorted(r["env_restarts"] for r in rows(run_dir))
    log = (run_dir / "error.log").read_text()
    assert log.count('raise RuntimeError("simulator lost its connection")') == 12
    said = [r.getMessage() for r in caplog.records if r.name.startswith("htsrl_aio")]
    lost = "failed and was re-created: RuntimeError: simulator lost its connection"
    assert sum(lost in message for message in said) == 12


@pytest.mark.slow
def test_restarts_are_as_reproducible_as_the_rest(tmp_path, no_leaks):
    a = train(restarting(tmp_path / "a", "envs_for_tests:raising_cartpole", workers=1))
    b = train(restarting(tmp_path / "b", "envs_for_tests:raising_cartpole", workers=2, max_batch=2))
    assert a["final_params_sha256"] == b["final_params_sha256"]
    # A row counts the restarts of the rollouts learned up to it, whatever the next rollout was doing
    # meanwhile: the 4 envs fail at their step calls 101, 202 and 303, i.e. in rollouts 6, 12 and 18.
    expected = [4 * sum(update >= r for r in (6, 12, 18)) for update in range(20)]
    assert [r["env_restarts"] for r in rows(tmp_path / "a")] == expected
    assert [r["env_restarts"] for r in rows(tmp_path / "b")] == expected


@pytest.mark.slow
def test_a_dead_worker_is_spawned_again_with_its_envs(run_dir, tmp_path, monkeypatch, no_leaks):
    monkeypatch.setenv("HTSRL_TEST_DEATH_MARKER", str(tmp_path / "died"))
    summary = train(restarting(run_dir, "envs_for_tests:dies_once_cartpole"))
    assert summary["updates"] == 20
    assert rows(run_dir)[-1]["env_restarts"] == 2  # the worker hosted 2 of the 4 envs: both start again
    assert "died (exit code 9); started again" in (run_dir / "error.log").read_text()


def test_processes_a_dead_workers_envs_started_in_a_session_of_their_own_do_not_outlive_it(
        run_dir, tmp_path, monkeypatch, no_leaks):
    spawned = tmp_path / "spawned"
    spawned.mkdir()
    monkeypatch.setenv("HTSRL_TEST_SPAWN_DIR", str(spawned))
    monkeypatch.setenv("HTSRL_TEST_DEATH_MARKER", str(tmp_path / "died"))
    summary = train(restarting(run_dir, "envs_for_tests:process_starting_dies_once_cartpole"))
    assert summary["updates"] == 20 and rows(run_dir)[-1]["env_restarts"] == 2
    started = {int(path.name) for path in spawned.iterdir()}
    try:
        # The probe's env, the 4 replicas and the 2 started again each started 2, one in a new session
        # (an orphan once its worker died: no parent chain leads from the run to it any more).
        assert len(started) == 2 * (1 + 4 + 2)
        assert [pid for pid in started if alive(pid)] == []
    finally:
        for pid in filter(alive, started):
            os.kill(pid, signal.SIGKILL)


def test_an_env_that_always_fails_still_stops_the_run(run_dir, no_leaks):
    with pytest.raises(EnvError, match=f"restarted {MAX_RESTARTS_PER_ENV} times"):
        train(restarting(run_dir, "envs_for_tests:always_raising_cartpole"))


@pytest.mark.slow
def test_in_loop_async_env_is_recreated_too(run_dir, no_leaks):
    summary = train(restarting(run_dir, "envs_for_tests:failing_async_cartpole"))
    assert summary["updates"] == 20
    assert rows(run_dir)[-1]["env_restarts"] > 0


@pytest.mark.slow
def test_a_resumed_run_goes_on_counting_restarts_where_its_checkpoint_was(tmp_path, no_leaks):
    full = train(restarting(tmp_path / "full", "envs_for_tests:raising_cartpole", checkpoint_every=8))
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    resumed = resume(crashed / "checkpoints" / "update-0000008.pt")  # after the first 4 restarts
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert [r["env_restarts"] for r in rows(crashed)] == [r["env_restarts"] for r in rows(tmp_path / "full")]
