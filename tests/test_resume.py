"""Checkpoints and --resume: a resumed run ends exactly where an uninterrupted one would."""

import itertools
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from envs_for_tests import unpicklable_cartpole
from harness import HANG_S, as_if_crashed_after, terminal_signals, wait_until

from htsrl_aio import ConfigError, TrainConfig, resume, train
from htsrl_aio.backends import env_state
from htsrl_aio.checkpoint import load
from htsrl_aio.cli import main as cli_main


def config(run_dir: Path, **overrides) -> TrainConfig:
    base = {"env": "CartPole-v1", "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * 10, "workers": 2,
            "logdir": str(run_dir), "progress": False, "checkpoint_every": 3, "keep_checkpoints": 2}
    return TrainConfig(**{**base, **overrides})


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("algo,mode", [("ppo", "hts"), ("ppo", "sync"), ("a2c", "hts")])
def test_resume_from_a_periodic_checkpoint_is_bit_identical(tmp_path, no_leaks, algo, mode):
    full = train(config(tmp_path / "full", algo=algo, mode=mode))
    kept = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert kept == ["update-0000006.pt", "update-0000009.pt"]  # every 3 updates, the newest 2 kept

    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    # Execution settings may change on resume without changing a bit.
    resumed = resume(crashed / "checkpoints" / "update-0000006.pt", workers=1, learner="thread")
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert resumed["updates"] == full["updates"] == 10
    full_rows, resumed_rows = rows(tmp_path / "full"), rows(crashed)
    assert [r["update"] for r in resumed_rows] == list(range(1, 11))
    assert [r["actions_sha256"] for r in resumed_rows] == [r["actions_sha256"] for r in full_rows]
    assert resumed_rows[6]["resumed_from_update"] == 6 and resumed_rows[6]["resume_envs"] == "restored"
    assert resumed_rows[-1]["episodes"] == full_rows[-1]["episodes"]
    assert resumed_rows[-1]["episode_return_mean"] == full_rows[-1]["episode_return_mean"]


@pytest.mark.slow
def test_resume_without_env_states_restarts_envs_and_says_so(tmp_path, no_leaks):
    run = tmp_path / "full"
    train(config(run, env=unpicklable_cartpole, workers=1))
    crashed = as_if_crashed_after(run, tmp_path / "crashed")
    summary = resume(crashed)  # the directory: its newest resumable checkpoint (update 9)
    assert summary["updates"] == 10
    row = rows(crashed)[9]
    assert row["resumed_from_update"] == 9
    assert row["resume_envs"] == ("restarted with new derived seeds: the env's state could not be saved")


@pytest.mark.slow
def test_ctrl_c_then_resume_finishes_the_run(tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "htsrl_aio.cli", "train", "--num-envs", "4", "--rollout", "16",
            "--total-steps", str(4 * 16 * 400), "--workers", "2", "--logdir", str(run), "--no-progress",
            "--stop-timeout", str(HANG_S)]  # stops at the swap whatever the load
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_signals)
    try:
        wait_until(lambda: (run / "metrics.jsonl").exists() and len(rows(run)) >= 3, HANG_S, "three updates")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    stopped = load(run / "checkpoint.pt")
    assert stopped["kind"] == "swap" and stopped["optimizer"] is not None  # stopped at the next swap
    stop_update = stopped["update"]
    assert stop_update < 400

    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    done = rows(run)
    updates = [r["update"] for r in done]
    assert updates == sorted(updates) and updates[-1] == 400
    first_after = next(r for r in done if r["update"] > stop_update)
    assert first_after["resumed_from_update"] == stop_update
    assert first_after["resume_envs"] == "restored"
    assert json.loads((run / "summary.json").read_text())["updates"] == 400


def test_the_final_line_of_a_resumed_run_gives_the_whole_run_and_this_session(tmp_path, no_leaks, capsys):
    """Before, its time and steps/s counted only the resumed part, as if they were the run's."""
    run = tmp_path / "full"
    # Its checkpoint at update 3 holds rollout 4 too (a swap's): resumed, it collects rollout 5 alone.
    train(config(run, total_steps=4 * 16 * 5))
    crashed = as_if_crashed_after(run, tmp_path / "crashed")
    assert cli_main(["train", "--resume", str(crashed), "--no-progress"]) == 0
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["global_step"] == 320 and summary["session_steps"] == 64
    before = load(crashed / "checkpoints" / "update-0000003.pt")["schedule"]["wall_time_s"]
    assert summary["run_wall_time_s"] == pytest.approx(before + summary["wall_time_s"])
    assert summary["run_sps"] == pytest.approx(320 / summary["run_wall_time_s"])
    assert summary["sps"] == pytest.approx(64 / summary["wall_time_s"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"done: 320 steps in {summary['run_wall_time_s']:.1f}s over the whole run "
                           f"({summary['run_sps']:.0f} steps/s; 64 of them in {summary['wall_time_s']:.1f}s, "
                           f"{summary['sps']:.0f} steps/s, since resuming), mean return of the last 100 "
                           "episodes: "), line


def test_resume_refuses_finished_runs_and_changed_settings(tmp_path, no_leaks):
    run = tmp_path / "full"
    train(config(run, total_steps=4 * 16 * 5))
    with pytest.raises(ConfigError, match="already finished"):
        resume(run)
    crashed = as_if_crashed_after(run, tmp_path / "crashed")
    with pytest.raises(ConfigError, match="--lr cannot change when resuming"):
        resume(crashed, lr=0.1)


def test_corrupt_or_foreign_checkpoints_are_refused_without_running_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": _Exploit(str(marker))}, foreign)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    cases = [(garbage, "not a readable checkpoint"), (foreign, "holds objects other than tensors"),
             (plain, "not an htsrl-aio checkpoint")]
    for (path, message), command in itertools.product(cases, (["train", "--resume"], ["eval"])):
        with pytest.raises(SystemExit) as exited:
            cli_main([*command, str(path)])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not marker.exists()


def test_parameters_that_do_not_fit_the_network_or_damaged_parts_are_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    train(config(run, total_steps=4 * 16 * 2, checkpoint_every=0))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    other_env = {**state, "config": {**state["config"], "env": "Acrobot-v1"}}  # another env's spaces
    cases = [(other_env, r"the parameters in \S+ do not fit the network built for env 'Acrobot-v1' "
                         r"\(observations \(6,\) float32, 3 actions\): actor\.0\.weight is 64x4 in them but "
                         r"64x6 in the network \(and 3 more of other shapes\); .* trained with\.$"),
             ({**state, "model": "weights"}, r"is an htsrl-aio checkpoint but holds a malformed model"),
             ({**state, "update": "7"}, r"is an htsrl-aio checkpoint but holds a malformed update")]
    for index, ((values, message), command) in enumerate(itertools.product(cases, (["train", "--resume"],
                                                                                  ["eval"]))):
        path = tmp_path / f"case{index}" / "checkpoint.pt"
        path.parent.mkdir()
        torch.save(values, path)
        with pytest.raises(SystemExit) as exited:
            cli_main([*command, str(path)])
        assert exited.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), lines


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_env_state_signed_elsewhere_is_not_unpickled():
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    env.reset(seed=1)
    blob = env_state.capture(env)
    assert blob is not None
    assert env_state.restore(blob, None).unwrapped.state.tolist() == env.unwrapped.state.tolist()
    forged = bytes(32) + blob[32:]
    with pytest.raises(ValueError, match="not written on this machine"):
        env_state.restore(forged, None)


async def test_an_unwritable_checkpoint_is_one_sentence_and_the_previous_survives(run_dir, no_leaks):
    import resource

    from htsrl_aio import Trainer
    from htsrl_aio.outputs.run_dir import CheckpointWriteError

    cfg = config(run_dir, checkpoint_every=2, keep_checkpoints=5, total_steps=4 * 16 * 8)
    first = run_dir / "checkpoints" / "update-0000002.pt"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*update-0000004\.pt: "
                                                       r"File too large; free disk space"):
            async with Trainer(cfg) as trainer:
                async for metrics in trainer.updates():
                    if metrics["update"] == 3:  # update-2 was written inside swap 2, before update 3
                        # From now on no file of this process may grow past half a checkpoint: the
                        # disk is "full" for the next checkpoint (the kernel refuses with EFBIG).
                        resource.setrlimit(resource.RLIMIT_FSIZE, (first.stat().st_size // 2, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert load(first)["kind"] == "swap" and load(first)["update"] == 2  # intact and loadable
    # No temporary file is left behind.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["update-0000002.pt"]
    assert "could not write checkpoint" in (run_dir / "error.log").read_text()


@pytest.mark.slow
def test_a_checkpoint_with_env_states_from_elsewhere_resumes_with_restarted_envs(tmp_path, no_leaks):
    train(config(tmp_path / "full"))
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    path = crashed / "checkpoints" / "update-0000009.pt"
    state = torch.load(path, weights_only=True)
    for env in state["envs"]:
        env["state"][:32] = 0  # a signature this machine's key did not make
    torch.save(state, path)
    summary = resume(path)
    assert summary["updates"] == 10
    assert rows(crashed)[9]["resume_envs"].startswith(
        "restarted with new derived seeds: the saved env state was not written on this machine")


@pytest.mark.slow
def test_a_run_resumed_on_a_smaller_machine_resolves_its_machine_defaults_again(tmp_path, no_leaks,
                                                                                 monkeypatch):
    """Workers default to the cores: a run started where 3 cores are free and resumed where 1 is must
    not start 3 workers there; a workers setting the user gave is kept; the bits are the same."""
    import htsrl_aio.config

    monkeypatch.setattr(htsrl_aio.config, "available_cores", lambda: 3)
    given = {"workers": None, "max_batch": 2}
    full = train(config(tmp_path / "full", **given))
    assert json.loads((tmp_path / "full" / "config.json").read_text())["workers"] == 3
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    monkeypatch.setattr(htsrl_aio.config, "available_cores", lambda: 1)
    resumed = resume(crashed / "checkpoints" / "update-0000006.pt")
    on_disk = json.loads((crashed / "config.json").read_text())
    assert on_disk["workers"] == 1 and on_disk["max_batch"] == 2  # resolved again; the user's kept
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
