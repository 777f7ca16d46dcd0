"""A stop signal ends the run at the next swap with a checkpoint that resumes exactly; past
--stop-timeout, or at a second Ctrl-C, it stops at once; either way metrics.jsonl ends at the update
the checkpoint holds, and nothing is printed after the final sentence."""

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from harness import HANG_S, metrics_rows, signalled

from htsrl_aio import TrainConfig, checkpoint, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.trainer import Trainer
from htsrl_aio.training import run_event_loop

# Jittered steps (0-2 ms) keep the run going long enough for a signal to land in the middle of it. The
# next swap comes whatever the load: --stop-timeout only guards against one that never does.
RUN = {"env": "envs_for_tests:jitter_cartpole", "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * 40,
       "workers": 2, "checkpoint_every": 0, "stop_timeout": HANG_S}


def _flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flags += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else [value])]
    return flags


def _signalled_run(run: Path, settings: dict, sig: signal.Signals, *,
                   again_when: Callable[[], bool] | None = None) -> tuple[int, str]:
    """`htsrl-aio train` with `settings`, signalled as `signalled` does."""
    argv = [sys.executable, "-m", "htsrl_aio.cli", "train", *_flags(settings), "--logdir", str(run),
            "--no-progress"]
    return signalled(argv, run, sig, again_when=again_when)


@pytest.mark.slow
@pytest.mark.parametrize("algo,mode,sig", [("ppo", "hts", signal.SIGINT), ("ppo", "sync", signal.SIGTERM),
                                           ("a2c", "hts", signal.SIGHUP), ("a2c", "sync", signal.SIGINT)])
def test_a_signal_stops_at_the_next_swap_and_the_resumed_run_is_bit_identical(tmp_path, algo, mode, sig):
    settings = {**RUN, "algo": algo, "mode": mode}
    if algo == "a2c":
        settings["total_steps"] = 4 * 5 * 100  # a2c's rollout is 5 steps: as many env steps, more updates
        settings["rollout"] = 5
    full = train(TrainConfig(**settings, logdir=str(tmp_path / "full"), progress=False))

    run = tmp_path / "stopped"
    code, stderr = _signalled_run(run, settings, sig)
    assert code == 128 + sig, stderr
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)
    update = stopped["update"]
    assert stopped["kind"] == "swap" and 0 < update < full["updates"], "the signal came too late"
    assert stderr.endswith(f"stopped at the swap after update {update} with a checkpoint that resumes "
                           f"exactly (checkpoints/update-{update:07d}.pt); envs stopped and shared memory "
                           "freed.\n")
    assert metrics_rows(run)[-1]["update"] == update  # the checkpointed update's row is there

    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert [r["update"] for r in metrics_rows(run)] == list(range(1, full["updates"] + 1))
    full_rows = metrics_rows(tmp_path / "full")
    assert [r["actions_sha256"] for r in metrics_rows(run)] == [r["actions_sha256"] for r in full_rows]
    assert metrics_rows(run)[update]["resume_envs"] == "restored"


@pytest.mark.slow
def test_past_the_stop_timeout_it_stops_at_once_and_keeps_the_metrics_row_of_its_checkpoint(tmp_path):
    # A learner busy most of the time (many epochs), so the stop lands inside an update: that update
    # finishes, and its row is written before checkpoint.pt names it.
    settings = {**RUN, "epochs": 30, "hidden": (256,), "stop_timeout": 0}
    run = tmp_path / "run"
    code, stderr = _signalled_run(run, settings, signal.SIGTERM)
    assert code == 143, stderr
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)
    assert stopped["kind"] == "stop" and stopped["optimizer"] is not None
    assert "the next swap did not come within --stop-timeout 0 s, so it stopped at once with checkpoint.pt " \
           f"of update {stopped['update']} (its envs restart on resume)" in stderr
    assert metrics_rows(run)[-1]["update"] == stopped["update"]

    assert cli_main(["train", "--resume", str(run), "--no-progress", "--stop-timeout", "20"]) == 0
    assert [r["update"] for r in metrics_rows(run)] == list(range(1, 41))  # no update missing, none twice


def test_a_second_ctrl_c_during_the_swap_checkpoint_prints_nothing_after_the_final_sentence(tmp_path):
    # Large layers make the swap checkpoint slow to write, so the second Ctrl-C lands while it is written.
    settings = {**RUN, "hidden": (2048, 2048)}
    run = tmp_path / "run"

    def checkpoint_being_written() -> bool:
        return any((run / "checkpoints").glob(".*.tmp"))

    code, stderr = _signalled_run(run, settings, signal.SIGINT, again_when=checkpoint_being_written)
    assert code == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("htsrl-aio: interrupted; stopped at once with checkpoint.pt of update"), stderr
    assert "never retrieved" not in stderr


def test_a_stop_while_resuming_says_the_run_stays_at_the_checkpoint_it_resumed_from(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**RUN, "total_steps": 4 * 16 * 6, "checkpoint_every": 2}, logdir=str(run),
                      progress=False))
    (run / "summary.json").unlink()  # as if stopped after its newest checkpoint
    newest = checkpoint.newest(run, resumable=True)
    update = torch.load(newest, weights_only=True)["update"]
    trainer = Trainer.resume(run)

    async def stop_during_start_up() -> None:
        starting = asyncio.ensure_future(trainer.__aenter__())
        await asyncio.sleep(0)  # the set-up has begun: where a signal during start-up finds it
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting

    before = newest.read_bytes()
    run_event_loop(stop_during_start_up())
    assert trainer.stop_note == (f"stopped before its first update since resuming; the run stays at update "
                                 f"{update}, its checkpoints unchanged")
    assert checkpoint.newest(run, resumable=True) == newest and newest.read_bytes() == before


@pytest.mark.slow
def test_a_run_stopped_during_its_start_up_starts_again_from_the_beginning_on_resume(tmp_path,
                                                                                      monkeypatch):
    """A supervisor that restarts preempted jobs with --resume must not break on a job preempted while
    it starts: a run stopped before its first update says so, and --resume runs it from the beginning
    with the settings it recorded, to the same bits as a run never stopped."""
    go = tmp_path / "go"
    monkeypatch.setenv("HTSRL_TEST_GO_MARKER", str(go))
    settings = {**RUN, "env": "envs_for_tests:stalls_in_workers_cartpole", "total_steps": 4 * 16 * 6,
                "stop_timeout": 0}
    run = tmp_path / "stopped"
    argv = [sys.executable, "-m", "htsrl_aio.cli", "train", *_flags(settings), "--logdir", str(run),
            "--no-progress"]
    code, stderr = signalled(argv, run, signal.SIGTERM, when=lambda: (run / "config.json").exists())
    assert code == 128 + signal.SIGTERM, stderr
    assert stderr.endswith(f"htsrl-aio: terminated; stopped before its first update; --resume {run} starts "
                           "it again from the beginning; envs stopped and shared memory freed.\n"), stderr
    assert not (run / "checkpoint.pt").exists() and not metrics_rows(run)

    go.touch()
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    full = train(TrainConfig(**settings, logdir=str(tmp_path / "full"), progress=False))
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert [r["actions_sha256"] for r in metrics_rows(run)] == \
        [r["actions_sha256"] for r in metrics_rows(tmp_path / "full")]
