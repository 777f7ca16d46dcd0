"""End to end, with real worker processes and shared memory."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from envs_for_tests import jitter_cartpole

from htsrl_aio import ConfigError, EnvError, HtsrlError, TrainConfig, train, train_async
from htsrl_aio.cli import main as cli_main

REQUIRED_METRICS = {"update", "global_step", "wall_time_s", "sps", "episode_return_mean", "episodes",
                    "policy_lag", "learner_busy_frac", "collector_busy_frac", "actions_sha256"}


def small(run_dir: Path, **overrides) -> TrainConfig:
    base = {"env": "CartPole-v1", "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * 4,
            "workers": 2, "logdir": str(run_dir), "progress": False}
    return TrainConfig(**{**base, **overrides})


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["hts", pytest.param("sync", marks=pytest.mark.slow)])
def test_run_writes_config_metrics_summary_and_checkpoint(run_dir, no_leaks, mode):
    summary = train(small(run_dir, mode=mode))
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json",
                                                   "checkpoint.pt"}
    rows = read_metrics(run_dir)
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    assert all(set(r) >= REQUIRED_METRICS for r in rows)
    assert [r["global_step"] for r in rows] == [64, 128, 192, 256]
    assert [r["policy_lag"] for r in rows] == ([0, 1, 1, 1] if mode == "hts" else [0, 0, 0, 0])
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["global_step"] == 256 and len(summary["final_params_sha256"]) == 64
    assert json.loads((run_dir / "config.json").read_text())["mode"] == mode


async def test_awaitable_form_runs_inside_an_existing_loop(run_dir, no_leaks):
    summary = await train_async(small(run_dir))
    assert summary["updates"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("algo,rollout", [("ppo", 16), ("a2c", 5)])
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_same_seed_same_bits_whatever_workers_batching_or_timing(tmp_path, no_leaks, algo, rollout, mode):
    """Env steps sleep a random time from outside the seed; workers, max-batch and learner change too."""
    runs = []
    for name, workers, max_batch, learner in [("a", 1, 6, "process"), ("b", 3, 2, "process"),
                                              ("c", 2, 4, "thread")]:
        cfg = TrainConfig(env=jitter_cartpole, algo=algo, mode=mode, num_envs=6, rollout=rollout,
                          total_steps=6 * rollout * 6, workers=workers, max_batch=max_batch, learner=learner,
                          minibatches=2 if algo == "ppo" else 1, logdir=str(tmp_path / name), progress=False)
        summary = train(cfg)
        trace = [r["actions_sha256"] for r in read_metrics(tmp_path / name)]
        runs.append((summary["final_params_sha256"], trace))
    assert runs[0] == runs[1] == runs[2]
    assert any(r["episodes"] > 0 for r in read_metrics(tmp_path / "a"))  # autoresets happened


@pytest.mark.parametrize("user_value,expected", [(None, "AUTO,STRICT"), ("AVX2,STRICT", "AVX2,STRICT")])
def test_importing_htsrl_aio_makes_mkl_strict_unless_the_user_chose(user_value, expected):
    # Without strict mode, the runs of the test above differed in their last bits on an AVX-512 Xeon.
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    if user_value is not None:
        env["MKL_CBWR"] = user_value
    code = "import os, htsrl_aio; print(os.environ['MKL_CBWR'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


def test_a_run_whose_mkl_is_not_strict_says_so(run_dir, no_leaks, monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    train(small(run_dir, total_steps=64))
    note = json.loads((run_dir / "config.json").read_text())["determinism"]
    if torch.backends.mkl.is_available():
        assert note.startswith("not guaranteed: MKL_CBWR=AUTO is not strict"), note
    else:  # no MKL: nothing to warn about
        assert note.startswith("bit-identical"), note


@pytest.mark.slow
def test_a_different_seed_gives_a_different_run_and_diff_names_the_update(tmp_path, no_leaks, capsys):
    train(small(tmp_path / "a", seed=1))
    train(small(tmp_path / "b", seed=1, workers=1))
    train(small(tmp_path / "c", seed=2))
    assert cli_main(["diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "identical" in capsys.readouterr().out
    assert cli_main(["diff", str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "diverge at update 1" in capsys.readouterr().out


def test_env_that_raises_stops_the_run_with_one_sentence(run_dir, no_leaks):
    with pytest.raises(EnvError, match=r"env \d of 'envs_for_tests:raising_cartpole' failed: "
                                       r"RuntimeError: simulator lost its connection"):
        train(small(run_dir, env="envs_for_tests:raising_cartpole", total_steps=4 * 16 * 10))
    # The worker's traceback is kept in the run directory, not printed; what was learned is kept too.
    assert 'raise RuntimeError("simulator lost its connection")' in (run_dir / "error.log").read_text()
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["interrupted"] is True and checkpoint["update"] >= 1


def test_worker_that_dies_is_reported(run_dir, no_leaks):
    with pytest.raises(EnvError, match="died unexpectedly"):
        train(small(run_dir, env="envs_for_tests:dying_cartpole", total_steps=4 * 16 * 20))


def test_env_returning_the_wrong_shape_is_named(run_dir, no_leaks):
    with pytest.raises(ConfigError, match=r"returned an observation of shape \(7,\) but its "
                                          r"observation_space says \(4,\)"):
        train(small(run_dir, env="envs_for_tests:wrong_shape_cartpole"))


@pytest.mark.parametrize("overrides,message", [
    ({"env": "CartPole-v2"}, r"unknown env id 'CartPole-v2'.*Did you mean CartPole-v1"),
    ({"total_steps": -5}, r"--total-steps must be a positive integer"),
    ({"minibatches": 5}, r"--minibatches 5 does not divide the batch of num_envs\*rollout = 64"),
    ({"env": "envs_for_tests:dict_action_env"}, r"action_space is Dict\(.*\); htsrl-aio samples Discrete"),
    ({"env": "no_such_module:make"}, r"cannot import module 'no_such_module'"),
    ({"env": lambda: gym.make("CartPole-v1")}, r"cannot be sent to worker processes"),
    ({"env": lambda: None}, r"returned NoneType, which is neither a gymnasium env nor an AsyncEnv"),
    ({"algo": "dqn"}, r"unknown --algo 'dqn'"),
    ({"preset": "atari-pp"}, r"unknown --preset 'atari-pp'; did you mean 'atari-ppo'\?"),
    ({"on_env_error": "ignore"}, r"unknown --on-env-error 'ignore'; choose 'stop' or 'restart'"),
    ({"checkpoint_every": -1}, r"--checkpoint-every must be 0 or a positive integer"),
])
def test_bad_config_is_one_sentence_before_any_process_starts(run_dir, no_leaks, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(small(run_dir, **overrides))


@pytest.mark.parametrize("module", ["htsrl_aio", "htsrl_aio.cli"])
def test_cli_exits_2_with_one_line_on_bad_input(tmp_path, module):
    proc = subprocess.run([sys.executable, "-m", module, "train", "--env", "CartPol-v1",
                           "--logdir", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("htsrl-aio: error: unknown env id 'CartPol-v1': it is not a registered "
                               "gymnasium id. Did you mean CartPole-v1")


def test_cli_trains_and_reports(tmp_path, no_leaks):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-m", "htsrl_aio.cli", "train", "--num-envs", "4",
                           "--rollout", "8", "--total-steps", "150", "--workers", "2",
                           "--logdir", str(tmp_path / "r"), "--no-progress"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    # Whole rollouts of 32 steps only, which the start says (before, 128 of the 150 steps silently).
    note = "htsrl-aio: note: training 128 env steps, not --total-steps 150: a run trains whole rollouts"
    assert any(line.startswith(note) for line in proc.stderr.splitlines()), proc.stderr
    assert "done: 128 steps" in proc.stdout
    assert (tmp_path / "r" / "summary.json").exists()


def test_the_public_names_are_what_they_say_whatever_was_imported_first():
    # The package exports lazily (PEP 562); a submodule named like an export would replace it once imported.
    script = ("import importlib, pkgutil, sys, types, htsrl_aio\n"
              "for m in pkgutil.walk_packages(htsrl_aio.__path__, 'htsrl_aio.'):\n"
              "    importlib.import_module(m.name)\n"
              "bad = [n for n in htsrl_aio.__all__ if isinstance(getattr(htsrl_aio, n), types.ModuleType)]\n"
              "sys.exit(f'modules, not the exported names: {bad}' if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_existing_run_directory_is_never_overwritten(run_dir, no_leaks):
    train(small(run_dir))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(small(run_dir))


@pytest.mark.parametrize("learner", ["process", pytest.param("thread", marks=pytest.mark.slow)])
def test_nan_stops_the_run_naming_the_update_and_keeps_the_last_good_parameters(run_dir, no_leaks, learner):
    with pytest.raises(HtsrlError, match=r"^update 3: .* became NaN or Inf, so training stopped"):
        train(small(run_dir, env="envs_for_tests:huge_reward_cartpole", learner=learner,
                    total_steps=4 * 16 * 10))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["interrupted"] is True and checkpoint["update"] == 2
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert "update 3" in (run_dir / "error.log").read_text()


@pytest.mark.parametrize("env,message", [
    ("nan_reward_cartpole", r"step\(\) returned a non-finite reward \(nan\) at step \d+ of episode \d+"),
    ("inf_obs_cartpole", r"step\(\) returned a non-finite observation at step \d+ of episode \d+"),
])
def test_non_finite_env_output_stops_the_run_naming_env_and_step(run_dir, no_leaks, env, message):
    with pytest.raises(EnvError, match=rf"^env \d of 'envs_for_tests:{env}' failed: NonFinite: {message}; "
                                       "make the env return finite numbers"):
        train(small(run_dir, env=f"envs_for_tests:{env}", total_steps=4 * 16 * 10))


@pytest.mark.parametrize("env,envs,given,block,batch", [
    # An MLP: a pass costs its dispatch more than its rows, so blocks hold every env's row, up to 64.
    ("CartPole-v1", 4, None, 8, 4),
    ("CartPole-v1", 20, None, 24, 20),
    ("CartPole-v1", 72, None, 64, 72),
    ("envs_for_tests:ManySpacesEnv", 20, None, 8, 20),  # a 36x36 image read by a CNN: padded rows cost work
    ("CartPole-v1", 20, 4, 4, 20),
    ("envs_for_tests:meeting_agents", 4, None, 16, 12),  # 3 agents per env: 12 rows
])
def test_the_inference_block_and_batch_a_run_stores_fit_its_network_and_rows(run_dir, no_leaks, env, envs,
                                                                             given, block, batch):
    train(small(run_dir, env=env, num_envs=envs, inference_block=given, total_steps=envs * 16))
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["inference_block"], config["max_batch"]) == (block, batch)


def test_config_file_with_flags_overriding_it(tmp_path, no_leaks):
    config = tmp_path / "run.toml"
    config.write_text('num_envs = 4\nrollout = 8\ntotal_steps = 64\nworkers = 2\nlr = 0.002\nhidden = [16]\n'
                      'algo = "a2c"\n')
    run = tmp_path / "r"
    assert cli_main(["train", "--config", str(config), "--lr", "0.003", "--logdir", str(run),
                     "--no-progress"]) == 0
    effective = json.loads((run / "config.json").read_text())
    chosen = (effective["num_envs"], effective["lr"], effective["hidden"], effective["algo"])
    assert chosen == (4, 0.003, [16], "a2c")
    assert effective["optimizer"] == "rmsprop"  # a2c's default, since neither file nor flags set it


@pytest.mark.parametrize("text,message", [
    ("lrr = 1\n", r"unknown key 'lrr' in .*run.toml; did you mean 'lr'\?"),
    ('num_envs = "eight"\n', r"num_envs in .*run.toml has the wrong type: 'eight'"),
    ("num_envs = \n", r"is not valid TOML"),
])
def test_bad_config_file_is_one_sentence(tmp_path, capsys, text, message):
    config = tmp_path / "run.toml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--config", str(config), "--logdir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_train_help_shows_no_placeholder_for_a_default_made_by_a_factory(capsys):
    from htsrl_aio.cli import main as cli_main

    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--env-kwargs" in text and "MISSING" not in text  # was "(default: <..._MISSING_TYPE object>)"
