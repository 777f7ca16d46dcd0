"""AsyncEnvs run as coroutines on the training loop, with the same ticket guarantees as workers."""

import asyncio
import json

import pytest
from envs_for_tests import async_cartpole, cartpole_60

from htsrl_aio import ConfigError, EnvError, TrainConfig, train, train_async


def config(run_dir, **overrides) -> TrainConfig:
    base = {"env": async_cartpole, "num_envs": 6, "rollout": 16, "total_steps": 6 * 16 * 5,
            "logdir": str(run_dir), "progress": False}
    return TrainConfig(**{**base, **overrides})


def action_trace(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["actions_sha256"] for line in lines]


@pytest.mark.parametrize("mode", ["hts", pytest.param("sync", marks=pytest.mark.slow)])
async def test_in_loop_envs_train_with_one_update_of_lag(tmp_path, no_leaks, mode):
    summary = await train_async(config(tmp_path / "run", mode=mode))
    assert summary["updates"] == 5 and summary["episodes"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_lag"] for r in rows] == ([0, 1, 1, 1, 1] if mode == "hts" else [0] * 5)
    assert "event loop" in json.loads((tmp_path / "run" / "config.json").read_text())["env_runs"]


@pytest.mark.slow
@pytest.mark.parametrize("algo,rollout", [("ppo", 16), ("a2c", 5)])
def test_latency_and_batching_never_change_a_result(tmp_path, no_leaks, algo, rollout):
    """In-loop envs with random latency, and the same env in worker processes: identical bits."""
    runs = {}
    for name, env, max_batch, learner in [("loop_a", async_cartpole, 6, "process"),
                                          ("loop_b", async_cartpole, 2, "thread"),
                                          ("workers", cartpole_60, 4, "process")]:
        cfg = config(tmp_path / name, env=env, algo=algo, rollout=rollout, total_steps=6 * rollout * 6,
                     max_batch=max_batch, learner=learner, workers=2,
                     minibatches=2 if algo == "ppo" else 1)
        runs[name] = (train(cfg)["final_params_sha256"], action_trace(tmp_path / name))
    assert runs["loop_a"] == runs["loop_b"] == runs["workers"]


def test_an_async_env_that_raises_is_named(tmp_path, no_leaks):
    with pytest.raises(EnvError, match=r"env \d of 'envs_for_tests:failing_async_cartpole' failed "
                                       r"\(rollout \d+, step \d+\): ConnectionResetError: game server "
                                       r"hung up"):
        train(config(tmp_path / "run", env="envs_for_tests:failing_async_cartpole", total_steps=6 * 16 * 20))


def test_half_async_env_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"reset\(\) is a coroutine but step\(\) is not"):
        train(config(tmp_path / "run", env="envs_for_tests:half_async"))


def test_in_loop_factory_may_be_a_closure(tmp_path, no_leaks):
    """Nothing is sent to another process, so a lambda is fine for an AsyncEnv."""
    summary = train(config(tmp_path / "run", env=lambda: async_cartpole(), total_steps=6 * 16))
    assert summary["updates"] == 1


@pytest.mark.slow
async def test_1024_in_loop_envs_train_without_stalling(tmp_path, no_leaks):
    cfg = config(tmp_path / "run", num_envs=1024, rollout=8, total_steps=1024 * 8 * 3, max_batch=256)
    summary = await asyncio.wait_for(train_async(cfg), timeout=180)
    assert summary["updates"] == 3 and summary["global_step"] == 1024 * 8 * 3
