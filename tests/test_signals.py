"""Ctrl-C and SIGTERM stop a run cleanly: right exit code, no child process, no shared memory left."""

import glob
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import default_sigint, wait_until

from htsrl_aio.envs.shm import SHM_PREFIX


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        found |= {int(c) for c in Path(path).read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited; only its exit status is left


@pytest.mark.parametrize("sig,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_run_and_cleans_up(tmp_path, sig, exit_code):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "htsrl_aio.cli", "train", "--total-steps", "100000000",
                             "--workers", "2", "--logdir", str(run), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        metrics = run / "metrics.jsonl"
        wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 120,
                    "the first updates")
        children = _children(proc.pid)
        assert len(children) >= 3  # two env workers and the learner (and the resource tracker)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == exit_code, stderr
    assert "workers stopped and shared memory freed" in stderr
    assert "Traceback" not in stderr
    wait_until(lambda: not any(_alive(c) for c in children), 30, "child processes to exit")
    assert [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{proc.pid}_")] == []
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["interrupted"] is True and checkpoint["update"] >= 2
