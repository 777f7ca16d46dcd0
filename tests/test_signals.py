"""Stop signals end a run cleanly: right exit code, one sentence, a resumable checkpoint, no child
process and no shared memory left; orphans die with their parent; `htsrl-aio clean` removes what a
SIGKILL left."""

import glob
import os
import re
import signal
import subprocess
import sys
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import HANG_S, alive, dead_pid, signalled, terminal_signals, wait_until

from htsrl_aio import TrainConfig, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.ipc.shm import SHM_PREFIX, SharedArray

# A swap comes whatever the load: --stop-timeout only guards against one that never does.
TRAIN = [sys.executable, "-m", "htsrl_aio.cli", "train", "--workers", "2", "--no-progress", "--stop-timeout",
         str(HANG_S)]


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        found |= {int(c) for c in Path(path).read_text().split()}
    return found


def _spawned_children(pid: int) -> set[int]:
    """Env workers and the learner (the resource tracker is started differently)."""
    found = set()
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except FileNotFoundError:
            pass
    return found


def _start(argv: list[str]) -> subprocess.Popen:
    # A session of its own: signals can go to its process group, as a terminal or `timeout` sends them.
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_signals, start_new_session=True)


@pytest.mark.parametrize("group", [False, True], ids=["pid", "group"])
@pytest.mark.parametrize("sig,exit_code,said", [  # the fast tier sends SIGTERM; the slow one the others too
    pytest.param(signal.SIGINT, 130, "interrupted", marks=pytest.mark.slow),
    (signal.SIGTERM, 143, "terminated"),
    pytest.param(signal.SIGHUP, 129, "hung up (SIGHUP)", marks=pytest.mark.slow)])
def test_stop_signal_checkpoints_and_cleans_up(tmp_path, sig, exit_code, said, group):
    if sig == signal.SIGHUP and not group:
        pytest.skip("a closed terminal signals the group")
    run = tmp_path / "run"
    # Whole rollouts of the default 8 x 64 steps, so that the run's only line is the stop's.
    proc = _start([*TRAIN, "--total-steps", str(512 * 200_000), "--logdir", str(run)])
    try:
        metrics = run / "metrics.jsonl"
        wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, HANG_S,
                   "the first updates")
        children = _children(proc.pid)
        assert len(children) >= 3  # two env workers and the learner (and the resource tracker)
        if group:
            os.killpg(proc.pid, sig)  # `timeout`, systemd, Slurm, a terminal
        else:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == exit_code, stderr
    assert re.fullmatch(rf"htsrl-aio: {re.escape(said)}; stopped at the swap after update \d+ with a "
                        r"checkpoint that resumes exactly \(checkpoints/update-\d+\.pt\); envs stopped "
                        r"and shared memory freed\.", stderr.strip()), stderr
    wait_until(lambda: not any(alive(c) for c in children), HANG_S, "child processes to exit")
    assert [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{proc.pid}_")] == []
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["interrupted"] is True and checkpoint["update"] >= 2
    assert checkpoint["optimizer"] is not None  # the learner lived to hand it over: resumable


def test_ctrl_c_during_start_up_prints_no_child_traceback(tmp_path):
    proc = _start([*TRAIN, "--total-steps", "100000", "--logdir", str(tmp_path / "run")])
    try:
        # The moment the first child exists it is still importing: where a Ctrl-C used to kill it.
        wait_until(lambda: proc.poll() is not None or _spawned_children(proc.pid), HANG_S, "a child")
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


def test_killed_parent_takes_its_children_even_with_an_env_stuck_in_step(tmp_path):
    hung = tmp_path / "hung"
    hung.mkdir()
    proc = subprocess.Popen([*TRAIN, "--env", "envs_for_tests:hanging_cartpole", "--logdir",
                             str(tmp_path / "run")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HTSRL_TEST_HANG_DIR": str(hung),
                                 "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])},
                            start_new_session=True)
    children: set[int] = set()
    try:
        wait_until(lambda: len(list(hung.iterdir())) == 2, HANG_S, "both workers to hang in step()")
        children = _spawned_children(proc.pid)
        stuck = {int(p.name) for p in hung.iterdir()}
        assert stuck <= children
        proc.kill()
        proc.wait()
        wait_until(lambda: not any(alive(c) for c in children), HANG_S, "the orphans to exit")
    finally:
        proc.kill()
        for child in filter(alive, children):  # what the test found still running: do not leak it
            os.kill(child, signal.SIGKILL)


def _leaked_segment(pid: int) -> list[str]:
    """A segment and its creator's lock file as a run killed with its resource tracker leaves them: the
    lock released by the kernel, the segment untracked. Names of both, the segment's first."""
    owner = f"{pid}_{os.urandom(4).hex()}"
    lock = Path("/dev/shm", f"{SHM_PREFIX}{owner}.lock")
    lock.touch()
    segment = shared_memory.SharedMemory(name=f"{SHM_PREFIX}{owner}{os.urandom(6).hex()}", create=True,
                                         size=4096)
    resource_tracker.unregister(segment._name, "shared_memory")
    segment.close()
    return [segment.name, lock.name]


def test_clean_removes_shared_memory_of_dead_processes_only(capsys):
    stale = _leaked_segment(dead_pid())
    live = SharedArray.create((1024,), np.dtype(np.uint8))  # this process holds its lock
    try:
        assert cli_main(["clean"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("removed ") and all(name in out for name in stale) and live.spec.name not in out
        assert not any(os.path.exists(f"/dev/shm/{name}") for name in stale)
        assert os.path.exists(f"/dev/shm/{live.spec.name}")
        assert cli_main(["clean"]) == 0
        assert capsys.readouterr().out.startswith("nothing to clean")
    finally:
        live.close()
        for name in stale:
            Path("/dev/shm", name).unlink(missing_ok=True)


def test_every_run_removes_stale_shared_memory_first(tmp_path, no_leaks):
    stale = _leaked_segment(dead_pid())
    try:
        train(TrainConfig(num_envs=2, rollout=8, total_steps=16, workers=1, progress=False,
                          logdir=str(tmp_path / "run")))
        assert not any(os.path.exists(f"/dev/shm/{name}") for name in stale)
    finally:
        for name in stale:
            Path("/dev/shm", name).unlink(missing_ok=True)


def _started_by_envs(spawned: Path) -> set[int]:
    return {int(p.name) for p in spawned.iterdir()}


@pytest.mark.parametrize("ending", [pytest.param("finished", marks=pytest.mark.slow), "terminated"])
def test_processes_an_env_starts_do_not_outlive_the_run(tmp_path, monkeypatch, ending):
    spawned = tmp_path / "spawned"
    spawned.mkdir()
    monkeypatch.setenv("HTSRL_TEST_SPAWN_DIR", str(spawned))
    run = tmp_path / "run"
    argv = [*TRAIN, "--env", "envs_for_tests:process_starting_cartpole", "--num-envs", "4", "--rollout", "16",
            "--total-steps", str(4 * 16 * (4 if ending == "finished" else 10**6)), "--logdir", str(run)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                              *sys.path])},
                            start_new_session=True)
    try:
        if ending == "terminated":
            metrics = run / "metrics.jsonl"
            wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, HANG_S, "an update")
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == (0 if ending == "finished" else 143), stderr
    started = _started_by_envs(spawned)
    try:
        # The probe's env and the 4 replicas each started 2 (one of them in a session of its own).
        assert len(started) == 2 * (1 + 4)
        assert [pid for pid in started if alive(pid)] == []
    finally:
        for pid in filter(alive, started):
            os.kill(pid, signal.SIGKILL)


class _InterruptedImport:
    """A meta-path finder standing in for Ctrl-C while the CLI imports torch and the runtime."""

    def find_spec(self, name, path=None, target=None):
        if name == "htsrl_aio.training":
            raise KeyboardInterrupt
        return None


def test_a_run_survives_a_kill_of_its_resource_tracker_without_a_word(tmp_path):
    # The workers stall in their first reset until `go` exists: the run's segments exist, its processes
    # have started (no start of a process asks for the tracker any more), and the tracker is killed then.
    go, run = tmp_path / "go", tmp_path / "run"
    proc = subprocess.Popen([*TRAIN, "--env", "envs_for_tests:stalls_in_workers_cartpole", "--num-envs", "4",
                             "--rollout", "8", "--total-steps", "64", "--logdir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HTSRL_TEST_GO_MARKER": str(go),
                                 "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])})
    try:
        wait_until(Path(f"{go}.waiting").exists, HANG_S, "the workers' first reset")
        assert glob.glob(f"/dev/shm/{SHM_PREFIX}{proc.pid}_*")
        trackers = [c for c in _children(proc.pid)
                    if b"resource_tracker" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(trackers) == 1
        os.kill(trackers[0], signal.SIGKILL)
        go.touch()
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert (proc.returncode, stderr) == (0, "")
    assert not glob.glob(f"/dev/shm/{SHM_PREFIX}{proc.pid}_*")


def test_the_first_ctrl_c_stops_check_env_inside_a_frozen_env_in_one_line(tmp_path, monkeypatch):
    # --env-timeout 0: nothing else would end the frozen step; the env runs in a child all the same.
    frozen = tmp_path / "frozen"
    monkeypatch.setenv("HTSRL_TEST_FROZEN_MARKER", str(frozen))
    argv = [sys.executable, "-m", "htsrl_aio.cli", "check-env",
            "envs_for_tests:hangs_after_40_steps_cartpole", "--env-timeout", "0"]
    code, stderr = signalled(argv, tmp_path, signal.SIGINT, when=frozen.exists)
    assert (code, stderr) == (130, "htsrl-aio: check-env interrupted.\n")


def test_ctrl_c_while_the_cli_loads_torch_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "htsrl_aio.training", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptedImport(), *sys.meta_path])
    try:
        code = cli_main(["train", "--env", "CartPole-v1", "--logdir", str(tmp_path / "run"), "--no-progress"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C while the CLI loads torch escaped as a traceback")
    assert code == 130
    assert capsys.readouterr().err == "htsrl-aio: interrupted before the run started; nothing was written.\n"
    assert not (tmp_path / "run").exists()


def test_the_cli_starts_without_torch():
    # The first second or two of `htsrl-aio train` is torch loading, inside the CLI's Ctrl-C handling;
    # importing the CLI itself must not load it before main() runs.
    probe = "import sys, htsrl_aio.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"
