"""The hostile user's cases of issue 29 that have a command-line reproduction, run as `htsrl-aio`
subprocesses: each must end with its exit status (2 wrong input, 1 a failure, 130/143 a stop signal)
and, where it fails, with ONE line on stderr starting with `htsrl-aio:` and no traceback. Prints a table
(docs/benchmarks.md). Slow cases (full disks, soaks) are left to the tests and benchmarks/soak.py.

    python benchmarks/hostile.py [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 120.0
SIGNAL_AFTER = "config.json"  # written as the start opens its run directory, before workers start

# Envs built for a case (each a few lines), importable as `hostile_envs:<name>` in the subprocesses.
HOSTILE_ENVS = '''
import gymnasium as gym
import numpy as np

class TwoAgents(gym.Env):
    possible_agents = ["a", "b"]
    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

def two_agents():
    return TwoAgents()
'''


@dataclass
class Case:
    name: str
    argv: list[str]  # after `htsrl-aio`, or a whole command line when `python` is set
    expected: int
    python: bool = False
    signal_at_start: int | None = None  # sent once the run directory's config.json exists
    limits: dict[int, int] = field(default_factory=dict)  # resource -> soft limit for the child
    needs: str | None = None  # a module that must be importable, else the case is skipped
    report: bool = False  # check-env: its report on stdout says what is wrong, stderr stays empty


def _ctrl_c_while_loading() -> list[str]:
    hook = ("import signal, sys\n"
            "class CtrlC:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'htsrl_aio.config':\n"
            "            sys.meta_path.remove(self)\n"
            "            signal.raise_signal(signal.SIGINT)\n"
            "sys.meta_path.insert(0, CtrlC())\n"
            "sys.argv = ['htsrl-aio', 'train', '--env', 'CartPole-v1']\n"
            "from htsrl_aio.cli import main\n"
            "sys.exit(main())\n")
    return [sys.executable, "-c", hook]


def cases(tmp: Path) -> list[Case]:
    train = ["train", "--no-progress", "--total-steps", "2048", "--workers", "1", "--num-envs", "4"]
    bad_checkpoint = tmp / "bad" / "checkpoint.pt"
    bad_checkpoint.parent.mkdir()
    bad_checkpoint.write_bytes(b"not a checkpoint")
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run\n")

    def logdir(name: str) -> list[str]:
        return ["--logdir", str(tmp / "runs" / name)]

    return [
        Case("negative --lr", [*train, "--env", "CartPole-v1", "--lr", "-1"], 2),
        Case("unknown env id", [*train, "--env", "CartPol-v1"], 2),
        Case("unknown --preset", [*train, "--env", "CartPole-v1", "--preset", "nope"], 2),
        Case("--minibatches not dividing --memory sequences",
             [*train, "--env", "CartPole-v1", "--memory", "lstm", "--minibatches", "8"], 2),
        Case("--bptt without --memory", [*train, "--env", "CartPole-v1", "--bptt", "8"], 2),
        Case("check-env --steps -5", ["check-env", "CartPole-v1", "--steps", "-5"], 2),
        Case("plain env on --env-backend loop", [*train, "--env", "CartPole-v1", "--env-backend", "loop"], 2),
        Case("multi-agent env", [*train, "--env", "hostile_envs:two_agents"], 2),
        Case("Dict action space", [*train, "--env", "envs_for_tests:dict_action_env"], 2),
        Case("env module that does not import", [*train, "--env", "no_such_module_here:make"], 2),
        Case("ALE obs_type=ram", [*train, "--env", "ALE/Breakout-v5", "--env-kwargs", "obs_type=ram"], 2,
             needs="ale_py"),
        Case("ALE render_mode", [*train, "--env", "ALE/Breakout-v5", "--env-kwargs", "render_mode=human"], 2,
             needs="ale_py"),
        Case("frame flags on a football id", [*train, "--env", "gfootball/academy_empty_goal_close",
                                              "--frame-size", "42", "42"], 2, needs="gfootball"),
        Case("unreachable --ray-address", [*train, "--env", "CartPole-v1", "--env-backend", "ray",
                                           "--ray-address", "127.0.0.1:1", *logdir("ray")], 2, needs="ray"),
        Case("--ray-address without the ray backend",
             [*train, "--env", "CartPole-v1", "--ray-address", "127.0.0.1:1"], 2),
        Case("ulimit -n 40", [*train, "--env", "CartPole-v1", *logdir("nofile")], 2,
             limits={resource.RLIMIT_NOFILE: 40}),
        Case("ulimit -v 512 MiB", [*train, "--env", "CartPole-v1", *logdir("as")], 2,
             limits={resource.RLIMIT_AS: 512 * 2**20}),
        Case("/dev/shm smaller than the storage", [*train, "--env", "CartPole-v1", "--num-envs", "8",
                                                   "--rollout", "400000000", "--total-steps", "3200000000",
                                                   *logdir("shm")], 2),
        Case("eval of a file that is no checkpoint", ["eval", str(bad_checkpoint)], 2),
        Case("eval of a missing run", ["eval", str(tmp / "missing")], 2),
        Case("diff of foreign directories", ["diff", str(foreign), str(tmp / "bad")], 2),
        Case("--resume of a foreign directory", ["train", "--resume", str(foreign)], 2),
        Case("--config with --resume", ["train", "--resume", str(foreign), "--config", "x.toml"], 2),
        Case("env that raises", [*train, "--env", "envs_for_tests:raising_cartpole", *logdir("raises")], 1),
        Case("worker that dies", [*train, "--env", "envs_for_tests:dying_cartpole", *logdir("dies")], 1),
        Case("wrong observation shape (start-up check)",
             [*train, "--env", "envs_for_tests:wrong_shape_cartpole", *logdir("shape")], 2),
        Case("NaN reward", [*train, "--env", "envs_for_tests:nan_reward_cartpole", *logdir("nan")], 1),
        Case("MultiDiscrete obs out of range", [*train, "--env", "envs_for_tests:bad_observation_env",
                                                "--env-kwargs", "fault=multi_discrete_out_of_range",
                                                *logdir("md")], 1),
        Case("float frame in a uint8 space", [*train, "--env", "envs_for_tests:bad_observation_env",
                                              "--env-kwargs", "fault=float_frame", *logdir("float")], 1),
        Case("env hanging at its first step (start-up check), --env-timeout 5",
             [*train, "--env", "envs_for_tests:hangs_at_first_step", "--env-timeout", "5",
              *logdir("hang")], 2),
        Case("env hanging in its worker, --env-timeout 5",
             [*train, "--env", "envs_for_tests:hanging_cartpole", "--env-timeout", "5",
              *logdir("hang-worker")], 1),
        Case("env whose creation hangs in its worker, --env-timeout 5",
             [*train, "--env", "envs_for_tests:hangs_in_workers", "--env-timeout", "5",
              *logdir("hang-build")], 1),
        Case("worker dying while it creates its envs, --on-env-error restart",
             [*train, "--env", "envs_for_tests:exits_in_workers", "--on-env-error", "restart",
              *logdir("exit-build")], 1),
        Case("check-env of a close() that hangs", ["check-env", "envs_for_tests:hangs_in_close_cartpole",
                                                   "--steps", "5", "--env-timeout", "3"], 1, report=True),
        Case("Ctrl-C while the command loads", _ctrl_c_while_loading(), 130, python=True),
        Case("SIGINT during start-up", [*train, "--env", "CartPole-v1", *logdir("int")], 130,
             signal_at_start=signal.SIGINT),
        Case("SIGTERM during start-up", [*train, "--env", "CartPole-v1", *logdir("term")], 143,
             signal_at_start=signal.SIGTERM),
        Case("--resume of a run stopped during start-up", ["train", "--no-progress", "--resume",
                                                           str(tmp / "runs" / "term")], 0),
    ]


@dataclass
class Outcome:
    status: int | None
    stdout: str
    stderr: str
    seconds: float

    def verdict(self, case: Case) -> tuple[bool, str]:
        expected = case.expected
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if self.status is None:
            return False, f"no exit within {CASE_TIMEOUT_S:g} s"
        if "Traceback" in self.stderr + self.stdout:
            return False, "traceback"
        if case.report:
            said = [line for line in self.stdout.splitlines() if line.strip()]
            ok = self.status == expected and not lines and bool(said)
            return ok, f"(stdout) {said[-1] if said else ''}"[:100]
        if self.status != expected:
            return False, (lines[-1] if lines else "")[:100]
        if expected == 0:
            stray = [line for line in lines if not line.startswith("htsrl-aio:")]
            return not stray, (stray[0] if stray else "")[:100]
        one = len(lines) == 1 and lines[0].startswith("htsrl-aio:")
        return one, (lines[-1] if one else f"{len(lines)} lines: {' / '.join(lines)}")[:100]


def run(case: Case, tmp: Path) -> Outcome:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(tmp), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "HTSRL_TEST_HANG_DIR": str(tmp)}  # hanging_cartpole writes there
    argv = case.argv if case.python else [sys.executable, "-m", "htsrl_aio", *case.argv]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp, preexec_fn=_limited(case.limits))
    if case.signal_at_start is not None:
        _signal_once_started(proc, case, tmp)
    try:
        stdout, stderr = proc.communicate(timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return Outcome(None, stdout, stderr, time.monotonic() - start)
    return Outcome(proc.returncode, stdout, stderr, time.monotonic() - start)


def _limited(limits: dict[int, int]) -> Callable[[], None] | None:
    if not limits:
        return None

    def apply() -> None:
        for which, limit in limits.items():  # soft and hard, as `ulimit` sets them
            resource.setrlimit(which, (limit, limit))
    return apply


def _signal_once_started(proc: subprocess.Popen, case: Case, tmp: Path) -> None:
    """The signal lands in the start: after the run directory is opened, while the workers and the
    learner start (seconds on a small machine). Polled: this is a benchmark, not a test."""
    marker = Path(case.argv[case.argv.index("--logdir") + 1]) / SIGNAL_AFTER
    deadline = time.monotonic() + CASE_TIMEOUT_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(case.signal_at_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="htsrl-hostile-") as name:
        tmp = Path(name)
        (tmp / "hostile_envs.py").write_text(HOSTILE_ENVS)
        for case in cases(tmp):
            if args.only not in case.name:
                continue
            if case.needs and importlib.util.find_spec(case.needs) is None:
                rows.append((case.name, str(case.expected), "skipped", f"{case.needs} not installed", "-",
                             ""))
                continue
            outcome = run(case, tmp)
            ok, note = outcome.verdict(case)
            rows.append((case.name, str(case.expected), str(outcome.status), note, "ok" if ok else "BAD",
                         f"{outcome.seconds:.1f}"))
            print(f"{case.name}: {outcome.status} ({outcome.seconds:.1f} s)", file=sys.stderr, flush=True)
    print("| case | expected | got | ok | s | last line of stderr |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case_name, expected, got, note, ok, seconds in rows:
        print(f"| {case_name} | {expected} | {got} | {ok} | {seconds} | {note.replace('|', '/')} |")
    bad = sum(row[4] == "BAD" for row in rows)
    print(f"\n{len(rows)} cases, {bad} bad")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
