"""The embedding API: Trainer lives in the caller's event loop."""

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from htsrl_aio import TrainConfig, Trainer
from htsrl_aio.assembly import oversubscription_warning
from htsrl_aio.config import available_cores


def config(run_dir, **overrides) -> TrainConfig:
    base = {"env": "CartPole-v1", "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * 6, "workers": 2,
            "logdir": str(run_dir), "progress": False}
    return TrainConfig(**{**base, **overrides})


async def test_updates_yields_every_metrics_row_as_it_completes(run_dir, no_leaks):
    async with Trainer(config(run_dir)) as trainer:
        seen = [metrics async for metrics in trainer.updates()]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in seen] == [1, 2, 3, 4, 5, 6]
    assert [set(m) for m in seen] == [set(r) for r in rows]
    assert [m["actions_sha256"] for m in seen] == [r["actions_sha256"] for r in rows]
    assert trainer.summary is not None and trainer.summary["updates"] == 6


async def test_cancelling_the_task_stops_cleanly_and_checkpoints(run_dir, no_leaks):
    two_updates = asyncio.Event()

    async def host_task() -> None:
        async with Trainer(config(run_dir, total_steps=4 * 16 * 10_000)) as trainer:
            async for metrics in trainer.updates():
                if metrics["update"] == 2:
                    two_updates.set()

    task = asyncio.ensure_future(host_task())
    await asyncio.wait_for(two_updates.wait(), timeout=120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["interrupted"] is True and checkpoint["update"] >= 2
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
async def test_act_serves_the_host_without_changing_training(tmp_path, no_leaks):
    async with Trainer(config(tmp_path / "plain")) as trainer:
        plain = await trainer.run()
    async with Trainer(config(tmp_path / "acting")) as trainer:
        actions = []
        async for _ in trainer.updates():
            obs = np.zeros(4, np.float32)
            actions.append(await trainer.act(obs))
            assert await trainer.act(obs, deterministic=True) == await trainer.act(obs, deterministic=True)
        acting = trainer.summary
    assert set(actions) <= {0, 1}
    assert acting["final_params_sha256"] == plain["final_params_sha256"]


@pytest.mark.slow
async def test_training_does_not_starve_the_host_loop(run_dir, no_leaks):
    """A host coroutine that sleeps 1 ms at a time keeps getting scheduled while training runs: it beats
    during every rollout (64 steps of 8 envs, each step at least an inference pass and a worker's
    answer). Counted in beats, not timed: a loaded machine delays both sides alike (benchmarks/ records
    the delays)."""
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while True:
            await asyncio.sleep(0.001)
            beats += 1

    beat = asyncio.ensure_future(heartbeat())
    beats_at_update = []
    try:
        async with Trainer(config(run_dir, total_steps=8 * 64 * 20, num_envs=8, rollout=64)) as trainer:
            async for _ in trainer.updates():
                beats_at_update.append(beats)
    finally:
        beat.cancel()
    assert len(beats_at_update) == 20
    assert all(a < b for a, b in itertools.pairwise([0, *beats_at_update])), beats_at_update


async def test_more_torch_threads_than_cores_in_hts_is_warned_about(run_dir, no_leaks, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads = max(2, available_cores())  # inference and the learner: twice the cores
    with pytest.warns(RuntimeWarning, match=f"--torch-threads {threads} in hts.*OMP_WAIT_POLICY=PASSIVE"):
        async with Trainer(config(run_dir, torch_threads=threads, total_steps=4 * 16)) as trainer:
            await trainer.run()


@pytest.mark.parametrize(("overrides", "cores", "wait_policy", "warned"), [
    ({"torch_threads": 2}, 2, None, True),
    ({"torch_threads": 2}, 4, None, False),  # inference and learner fit, one core each
    ({"torch_threads": 3}, 4, None, True),
    ({"torch_threads": 1}, 1, None, False),  # one thread each: no OpenMP threads to spin
    ({"torch_threads": 2, "mode": "sync"}, 2, None, False),  # sync never computes both at once
    ({"torch_threads": 2}, 2, "passive", False),  # waiting threads sleep instead of spinning
])
def test_oversubscription_warning_cases(tmp_path, monkeypatch, overrides, cores, wait_policy, warned):
    if wait_policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", wait_policy)
    cfg = config(tmp_path, **overrides).resolved()
    assert (oversubscription_warning(cfg, torch.device("cpu"), cores) is not None) is warned
    assert oversubscription_warning(cfg, torch.device("cuda"), cores) is None


def test_the_cli_prints_the_warning_as_one_line(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    flags = ["--env", "CartPole-v1", "--num-envs", "4", "--rollout", "16", "--total-steps", "64",
             "--no-progress", "--torch-threads", str(max(2, available_cores())),
             "--logdir", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-m", "htsrl_aio", "train", *flags],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "--torch-threads" in line]
    assert len(warned) == 1 and warned[0].startswith("htsrl-aio: warning: --torch-threads"), proc.stderr
    assert "trainer.py" not in proc.stderr  # no file and line, no source echo


async def test_a_cancelled_swap_checkpoint_is_written_before_the_run_directory_is_released(
        run_dir, no_leaks, monkeypatch):
    """The periodic checkpoint is written off the loop; a cancel while it is written must not release the
    run directory (its lock) before the write ends, or a prompt --resume cleans up the half-written
    file under it."""
    from htsrl_aio.outputs.run_dir import RunDirectory

    writing, released = threading.Event(), threading.Event()
    save_periodic, close = RunDirectory.save_periodic, RunDirectory.close
    released_while_writing = []

    def slow_save_periodic(self, state, update, keep):
        writing.set()
        released.wait(timeout=5)  # before the fix the release came now; after it, only once this returns
        released_while_writing.append(released.is_set())
        save_periodic(self, state, update, keep)

    def noting_close(self):
        released.set()
        close(self)

    monkeypatch.setattr(RunDirectory, "save_periodic", slow_save_periodic)
    monkeypatch.setattr(RunDirectory, "close", noting_close)
    async with Trainer(config(run_dir, checkpoint_every=1, total_steps=4 * 16 * 100)) as trainer:
        task = asyncio.ensure_future(trainer.run())
        await asyncio.to_thread(writing.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert released_while_writing == [False]
    assert (run_dir / "checkpoints" / "update-0000001.pt").exists()
