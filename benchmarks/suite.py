"""The learning suite: hts against sync per env step, over envs, algorithms and seeds, reported the way
the field reports it (rliable's interquartile mean with stratified-bootstrap 95% confidence intervals,
Agarwal et al. 2021).

Each cell (env, algo, mode, seed, budget) is one `htsrl-aio train` run in its own directory,
`<results>/<env>/<algo>-<mode>-s<seed>`. A cell with a summary.json is finished and skipped; one
without (a crash, Ctrl-C) is started again from scratch. A lock file per cell lets several suite
processes, on one machine or on several sharing the folder, work through the same suite at once.

    python benchmarks/suite.py run --jobs 4 --workers 1          # the default suite
    python benchmarks/suite.py run --smoke                       # CartPole, 3 seeds, 40k steps
    python benchmarks/suite.py run --suite memory                # policies with memory (--memory)
    python benchmarks/suite.py run --envs Acrobot-v1 --algos ppo --seeds 1 2 3
    python benchmarks/suite.py report --plots docs/img           # tables, report.json, PNGs

`--train-args` passes extra flags to every run (`--train-args="--ent-coef 0.01"`); give such a
variant a --results folder of its own, since a finished cell is never rerun. `--no-eval` leaves out
the greedy evaluation of each finished cell (on a loaded machine it can take longer than the training);
a later `run` without it evaluates the finished cells that lack one.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from plotting import pyplot, save

from htsrl_aio.errors import ConfigError
from htsrl_aio.outputs.plot import load_run
from htsrl_aio.outputs.run_dir import CONFIG, SUMMARY

MODES = ("hts", "sync")
MODE_COLORS = {"hts": "tab:blue", "sync": "tab:gray"}


@dataclass(frozen=True)
class EnvPlan:
    """One env of a suite: its step budget, seeds and algorithms (each run in both modes)."""

    env: str
    total_steps: int
    seeds: tuple[int, ...]
    algos: tuple[str, ...] = ("ppo", "a2c")
    presets: dict[str, str] = field(default_factory=dict)  # algo -> --preset, where defaults do not fit
    # algo -> step budget instead of total_steps, where a preset's schedule is tuned for another one
    budgets: dict[str, int] = field(default_factory=dict)


TEN_SEEDS = tuple(range(1, 11))
FIVE_SEEDS = tuple(range(1, 6))  # for the envs whose cells take minutes, not seconds
SUITES: dict[str, tuple[EnvPlan, ...]] = {
    # One cell at a time on 2 cores: classic control and MiniGrid about 2 hours, LunarLander, MinAtar
    # and HalfCheetah about 5 more (cells of 5-20 minutes).
    "default": (
        EnvPlan("CartPole-v1", 300_000, TEN_SEEDS),
        EnvPlan("Acrobot-v1", 100_000, TEN_SEEDS),
        # A2C at the SB3 zoo's 200k steps: its preset's learning rate decays to 0 over the run, tuned
        # for that budget (run to 1M steps it was unstable in both modes; docs/learning.md).
        EnvPlan("LunarLander-v3", 1_000_000, FIVE_SEEDS, presets={"ppo": "box2d-ppo", "a2c": "box2d-a2c"},
                budgets={"a2c": 200_000}),
        # A Dict observation (image, direction, mission text) with sparse reward; PPO only, as its one
        # published reference is.
        EnvPlan("MiniGrid-Empty-Random-5x5-v0", 100_000, TEN_SEEDS, algos=("ppo",)),
        # Small-image arcade games (10x10 boolean channels, flattened into the MLP); no published PPO
        # number at this budget, so they are compared hts against sync only.
        EnvPlan("MinAtar/Breakout-v1", 1_000_000, FIVE_SEEDS, algos=("ppo",)),
        EnvPlan("MinAtar/SpaceInvaders-v1", 1_000_000, FIVE_SEEDS, algos=("ppo",)),
        # MuJoCo: 1M steps of the continuous-control preset is about 20 minutes a cell on 2 cores.
        EnvPlan("HalfCheetah-v5", 1_000_000, (1, 2, 3), algos=("ppo",), presets={"ppo": "mujoco-ppo"}),
    ),
    # Policies with memory (--memory) on tasks a memoryless policy cannot solve, at the SB3 zoo's
    # RecurrentPPO budget (rl-baselines3-zoo ppo_lstm.yml), with --preset pomdp-ppo. Twenty seeds (cells
    # of half a minute): over ten, a 5% gap between the modes was inside the noise (docs/learning.md).
    "memory": (
        EnvPlan("htsrl_aio.envs.pomdp:CartPoleNoVel-v1", 100_000, tuple(range(1, 21)), algos=("ppo",),
                presets={"ppo": "pomdp-ppo"}),
    ),
    # CI: a short PPO budget that learns well above chance (CartPole's random policy averages 22).
    "smoke": (EnvPlan("CartPole-v1", 40_000, (1, 2, 3), algos=("ppo",)),),
}


@dataclass(frozen=True)
class Reference:
    """A published final return, with where it comes from and the budget it was trained for."""

    score: float
    source: str


# Published numbers for the same env and algorithm. The first entry is the one scores are normalised
# by. SB3 zoo: rl-baselines3-zoo benchmark.md (one trained agent, deterministic evaluation, its own
# tuned hyperparameters and budget). CleanRL: docs/rl-algorithms/ppo.md, ppo.py with its defaults
# (4 envs x 128 steps, lr 2.5e-4, ent 0.01, 500k steps), mean +- std over 3 seeds of the average
# episodic return. Neither has our exact budget; docs/learning.md says so beside every number.
REFERENCES: dict[tuple[str, str], tuple[Reference, ...]] = {
    ("CartPole-v1", "ppo"): (Reference(500.0, "SB3 zoo PPO, 100k steps"),
                             Reference(490.0, "CleanRL ppo.py, 500k steps")),
    ("CartPole-v1", "a2c"): (Reference(500.0, "SB3 zoo A2C, 500k steps"),),
    ("Acrobot-v1", "ppo"): (Reference(-73.5, "SB3 zoo PPO, 1M steps"),
                            Reference(-86.4, "CleanRL ppo.py, 500k steps")),
    ("Acrobot-v1", "a2c"): (Reference(-83.4, "SB3 zoo A2C, 500k steps"),),
    ("LunarLander-v3", "ppo"): (Reference(242.1, "SB3 zoo PPO (LunarLander-v2), 1M steps"),),
    ("LunarLander-v3", "a2c"): (Reference(155.8, "SB3 zoo A2C (LunarLander-v2), 200k steps"),),
    ("HalfCheetah-v5", "ppo"): (
        Reference(1442.6, "CleanRL ppo_continuous_action (HalfCheetah-v4), 1M steps"),),
    ("MiniGrid-Empty-Random-5x5-v0", "ppo"): (
        Reference(0.968, "SB3 zoo PPO (FlatObsWrapper), 100k steps"),),
    ("htsrl_aio.envs.pomdp:CartPoleNoVel-v1", "ppo"): (
        Reference(500.0, "SB3 zoo RecurrentPPO (sb3-contrib), 100k steps"),),
}

# Mean return of the uniform random policy (100 episodes, reset seeds 0-99, gymnasium 1.x, measured
# 2026-11-30): the zero of the normalised score, so that 1.0 is the reference.
RANDOM_RETURNS = {"CartPole-v1": 23.7, "Acrobot-v1": -497.1, "LunarLander-v3": -192.0,
                  "MiniGrid-Empty-Random-5x5-v0": 0.213, "HalfCheetah-v5": -267.7,
                  # The random policy ignores the observation: CartPole-v1's number.
                  "htsrl_aio.envs.pomdp:CartPoleNoVel-v1": 23.7}

# The per-seed learning targets: a seed "learns" when its final mean return reaches this.
TARGETS = {("CartPole-v1", "ppo"): 475.0, ("CartPole-v1", "a2c"): 475.0, ("Acrobot-v1", "ppo"): -100.0,
           ("Acrobot-v1", "a2c"): -100.0, ("LunarLander-v3", "ppo"): 200.0,
           ("htsrl_aio.envs.pomdp:CartPoleNoVel-v1", "ppo"): 475.0}


@dataclass(frozen=True)
class Cell:
    env: str
    algo: str
    mode: str
    seed: int
    total_steps: int
    preset: str | None = None

    def run_dir(self, results: Path) -> Path:
        return results / env_slug(self.env) / f"{self.algo}-{self.mode}-s{self.seed}"


def env_slug(env: str) -> str:
    """An env id as one file-name component (MinAtar/Breakout-v1 -> MinAtar-Breakout-v1,
    htsrl_aio.envs.pomdp:CartPoleNoVel-v1 -> CartPoleNoVel-v1)."""
    return env.rpartition(":")[2].replace("/", "-")


def plan_cells(plans: Iterable[EnvPlan], envs: list[str] | None, algos: list[str] | None,
               modes: list[str], seeds: list[int] | None, total_steps: int | None) -> list[Cell]:
    """Cells in running order: algorithm, env, seed, then mode, so an interrupted suite has hts and
    sync for the same seeds."""
    cells = []
    chosen = [p for p in plans if envs is None or p.env in envs]
    for algo in dict.fromkeys(a for p in chosen for a in p.algos):
        for plan in chosen:
            if algo not in plan.algos or (algos is not None and algo not in algos):
                continue
            for seed in plan.seeds if seeds is None else seeds:
                budget = total_steps or plan.budgets.get(algo, plan.total_steps)
                cells += [Cell(plan.env, algo, mode, seed, budget,
                               plan.presets.get(algo)) for mode in modes]
    return cells


@contextmanager
def cell_lock(run_dir: Path) -> Iterator[bool]:
    """Hold `<run_dir>.lock` (created with O_EXCL, so only one process can); yields False if another
    live process holds it. A lock left by a dead process on this host is taken over."""
    lock = run_dir.with_name(run_dir.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _lock_is_stale(lock):
                yield False
                return
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, owner.encode())
        os.close(fd)
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def _lock_is_stale(lock: Path) -> bool:
    try:
        host, pid = lock.read_text().split()
    except (OSError, ValueError):
        return False  # being written right now, or unreadable: leave it to its owner
    if host != socket.gethostname():
        return False  # another machine's process: we cannot tell, so respect it
    try:
        os.kill(int(pid), 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


def train_command(cell: Cell, run_dir: Path, workers: int, train_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "htsrl_aio", "train", "--env", cell.env, "--algo", cell.algo,
            "--mode", cell.mode, "--seed", str(cell.seed), "--total-steps", str(cell.total_steps),
            "--workers", str(workers), "--logdir", str(run_dir), "--no-progress",
            "--checkpoint-every", "0", *(["--preset", cell.preset] if cell.preset else []), *train_args]


# The SB3 zoo's references are one trained agent's deterministic return, so each cell's final policy is
# also played that way (greedy actions, episode seeds derived from the run seed) next to the training
# curve's last-100-episode mean, which a stochastic policy keeps lower.
EVAL_EPISODES = 20
EVAL_FILE = "eval.json"


def evaluate_cell(run_dir: Path) -> float:
    """Play a finished cell's final policy greedily for EVAL_EPISODES episodes; write and return the mean."""
    from htsrl_aio.evaluate import evaluate

    result = asyncio.run(evaluate(run_dir, episodes=EVAL_EPISODES, deterministic=True))
    tmp = run_dir / f"{EVAL_FILE}.tmp"
    tmp.write_text(json.dumps({"episodes": EVAL_EPISODES, "deterministic": True, "mean": result.mean,
                               "returns": result.returns}) + "\n")
    tmp.replace(run_dir / EVAL_FILE)
    return result.mean


def run_cell(cell: Cell, results: Path, workers: int, train_args: list[str], evaluate: bool = True) -> str:
    """Run one cell unless it is finished or another process holds it, then evaluate it unless
    `evaluate` is False; a line saying what happened."""
    run_dir = cell.run_dir(results)
    name = f"{cell.env} {cell.algo}-{cell.mode}-s{cell.seed}"
    if (run_dir / SUMMARY).is_file():
        if evaluate and not (run_dir / EVAL_FILE).is_file():  # finished before cells were evaluated
            try:
                return f"{name}: finished already; deterministic eval {evaluate_cell(run_dir):.1f}"
            except ConfigError as exc:
                return f"{name}: finished already; not evaluated: {exc}"
        return f"{name}: finished already"
    with cell_lock(run_dir) as held:
        if not held:
            return f"{name}: another process is running it"
        if (run_dir / SUMMARY).is_file():  # finished between the check and the lock
            return f"{name}: finished already"
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts over
        log = run_dir.with_name(run_dir.name + ".log")
        started = time.monotonic()
        with log.open("w") as out:
            rc = subprocess.run(train_command(cell, run_dir, workers, train_args), stdout=out,
                                stderr=subprocess.STDOUT, check=False).returncode
        seconds = time.monotonic() - started
        if rc != 0:
            return f"{name}: FAILED (exit status {rc}, see {log})"
        # The cell's whole time, process start-up and teardown included (summary.json has the run's).
        (run_dir / "cell.json").write_text(json.dumps({"cell_seconds": round(seconds, 1)}) + "\n")
        trained = f"{name}: {json.loads((run_dir / SUMMARY).read_text())['episode_return_mean']:.1f} " \
                  f"in {seconds:.0f}s"
        if not evaluate:
            return f"{trained}; not evaluated (--no-eval)"
        return f"{trained}; deterministic eval {evaluate_cell(run_dir):.1f}"


def run_cells(cells: list[Cell], results: Path, jobs: int, workers: int,
              train_args: list[str], evaluate: bool = True) -> None:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for line in pool.map(lambda c: run_cell(c, results, workers, train_args, evaluate), cells):
            print(line, flush=True)


# ----------------------------------------------------------------------------------------------------
# Report


@dataclass
class Run:
    env: str
    algo: str
    mode: str
    seed: int
    final_return: float
    best_return: float
    wall_time_s: float
    cell_seconds: float | None
    eval_return: float | None  # the final policy's deterministic return (EVAL_FILE), None before it
    curve: list[tuple[int, float, float]]  # (global_step, wall_time_s, mean return of the last 100)


def load_runs(results: Path) -> list[Run]:
    """Every finished cell under `results` (unfinished ones are left out)."""
    runs = []
    for summary_file in sorted(results.glob(f"*/*/{SUMMARY}")):
        run_dir = summary_file.parent
        config = json.loads((run_dir / CONFIG).read_text())
        summary = json.loads(summary_file.read_text())
        _, rows = load_run(run_dir)
        curve = [(r["global_step"], r["wall_time_s"], r["episode_return_mean"]) for r in rows
                 if r["episode_return_mean"] is not None]
        cell_file, eval_file = run_dir / "cell.json", run_dir / EVAL_FILE
        runs.append(Run(env=config["env"], algo=config["algo"], mode=config["mode"],
                        seed=config["seed"], final_return=summary["episode_return_mean"],
                        best_return=max(ret for _, _, ret in curve), wall_time_s=summary["wall_time_s"],
                        cell_seconds=json.loads(cell_file.read_text())["cell_seconds"]
                        if cell_file.is_file() else None,
                        eval_return=json.loads(eval_file.read_text())["mean"]
                        if eval_file.is_file() else None,
                        curve=curve))
    return runs


def normalise(env: str, algo: str, score: np.ndarray) -> np.ndarray | None:
    """0 for the random policy, 1 for the first published reference; None without a reference."""
    refs = REFERENCES.get((env, algo))
    if not refs or env not in RANDOM_RETURNS:
        return None
    return (score - RANDOM_RETURNS[env]) / (refs[0].score - RANDOM_RETURNS[env])


def interval_estimates(scores: dict[str, np.ndarray], func: Callable[[np.ndarray], Any],
                       reps: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`func` of each (runs x tasks) score matrix with its stratified-bootstrap 95% percentile CI.

    This is rliable's `get_interval_estimates`, bootstrapped here because rliable 1.2.0 (its latest
    release) passes `random_state` to arch's bootstrap, which arch 8 refuses, and arch 7 does not
    import with pandas 3. Runs are resampled with replacement within each task.
    """
    rng = np.random.default_rng(0)  # the same report from the same runs
    estimates = {}
    for name, matrix in scores.items():
        runs, tasks = matrix.shape
        picks = rng.integers(0, runs, size=(reps, runs, tasks))
        resampled = np.take_along_axis(matrix[None], picks, axis=1)
        low, high = np.percentile([func(sample) for sample in resampled], [2.5, 97.5], axis=0)
        estimates[name] = (np.asarray(func(matrix)), low, high)
    return estimates


def iqm_with_ci(scores: dict[str, np.ndarray], reps: int) -> dict[str, tuple[float, float, float]]:
    """rliable's interquartile mean of each (runs x tasks) matrix, with its 95% CI."""
    from rliable.metrics import aggregate_iqm

    return {name: (float(point), float(low), float(high))
            for name, (point, low, high) in interval_estimates(scores, aggregate_iqm, reps).items()}


# Thresholds of the performance profiles, in normalised score (0: random policy, 1: the reference).
PROFILE_TAUS = np.linspace(0.0, 1.2, 61)


def performance_profiles(scores: dict[str, np.ndarray], reps: int) -> dict[str, dict[str, list[float]]]:
    """rliable's score distribution per mode (the fraction of runs, over all tasks, whose normalised
    score exceeds each tau in PROFILE_TAUS) with its 95% CI band.

    `rliable.library.score_distributions` computes the same, but importing `rliable.library` imports
    arch, which does not import with pandas 3 (see `interval_estimates`)."""

    def profile(matrix: np.ndarray) -> np.ndarray:
        return (matrix[..., None] > PROFILE_TAUS).mean(axis=(0, 1))

    return {name: {"fraction": point.tolist(), "low": low.tolist(), "high": high.tolist()}
            for name, (point, low, high) in interval_estimates(scores, profile, reps).items()}


def parity(hts: tuple[float, float, float], sync: tuple[float, float, float]) -> dict[str, Any]:
    """The issue's parity test on two IQMs with CIs (normalised, or raw without a reference): hts within
    5% of sync's and overlapping CIs."""
    gap = (hts[0] - sync[0]) / abs(sync[0]) if sync[0] else float("nan")
    overlap = hts[1] <= sync[2] and sync[1] <= hts[2]
    return {"hts_vs_sync": gap, "cis_overlap": overlap, "parity": overlap and abs(gap) <= 0.05}


def env_algo_rows(runs: list[Run], reps: int) -> list[dict[str, Any]]:
    """Per (env, algo): per mode the IQM (raw and normalised) with CIs, seeds reaching the target,
    mean cell time; and the parity verdict."""
    rows = []
    for env, algo in dict.fromkeys((r.env, r.algo) for r in runs):
        by_mode = {m: sorted((r for r in runs if (r.env, r.algo, r.mode) == (env, algo, m)),
                             key=lambda r: r.seed) for m in MODES}
        if not all(by_mode.values()):
            continue
        raw = {m: np.array([[r.final_return] for r in rs]) for m, rs in by_mode.items()}
        row: dict[str, Any] = {"env": env, "algo": algo, "raw": iqm_with_ci(raw, reps),
                               "references": [r.__dict__ for r in REFERENCES.get((env, algo), ())]}
        normalised = {m: normalise(env, algo, s) for m, s in raw.items()}
        if all(v is not None for v in normalised.values()):
            row["normalised"] = iqm_with_ci(normalised, reps)
            row.update(parity(row["normalised"]["hts"], row["normalised"]["sync"]), parity_on="normalised")
        else:  # no published reference: compare the raw returns
            row.update(parity(row["raw"]["hts"], row["raw"]["sync"]), parity_on="raw")
        target = TARGETS.get((env, algo))
        for mode, rs in by_mode.items():
            cell_times = [r.cell_seconds for r in rs if r.cell_seconds is not None]
            evals = [r.eval_return for r in rs if r.eval_return is not None]
            row[mode] = {
                "seeds": len(rs), "final_returns": [round(r.final_return, 3) for r in rs],
                "mean": float(np.mean([r.final_return for r in rs])),
                "reached_target": None if target is None else sum(r.final_return >= target for r in rs),
                "ever_reached_target": None if target is None else sum(r.best_return >= target for r in rs),
                "cell_seconds_mean": float(np.mean(cell_times)) if cell_times else None,
                "eval_returns": [round(e, 3) for e in evals],
                "eval_mean": float(np.mean(evals)) if len(evals) == len(rs) else None,
                "sps_mean": float(np.mean([r.curve[-1][0] / r.wall_time_s for r in rs])),
            }
        rows.append(row)
    return rows


def _seeds(runs: list[Run], env: str, algo: str, mode: str) -> set[int]:
    return {r.seed for r in runs if (r.env, r.algo, r.mode) == (env, algo, mode)}


def aggregate_rows(runs: list[Run], reps: int) -> list[dict[str, Any]]:
    """Per algo, over every env with a reference and runs in both modes: normalised IQM of the seeds
    those envs share (rliable needs a runs x tasks matrix)."""
    rows = []
    for algo in dict.fromkeys(r.algo for r in runs):
        seeds_by_env = {e: set.intersection(*[_seeds(runs, e, algo, m) for m in MODES])
                        for e in dict.fromkeys(r.env for r in runs if r.algo == algo)
                        if normalise(e, algo, np.zeros(1)) is not None}
        # rliable needs the same runs for every task: the envs run with the most seeds (an env with
        # fewer, a long budget run on a few seeds, stays in the per-env rows only).
        most = max((len(seeds) for seeds in seeds_by_env.values()), default=0)
        envs = [e for e, seeds in seeds_by_env.items() if seeds and len(seeds) == most]
        seeds = set.intersection(*[seeds_by_env[e] for e in envs]) if envs else set()
        if not seeds:
            continue
        scores = {}
        for mode in MODES:
            table = {(r.env, r.seed): r.final_return for r in runs if (r.algo, r.mode) == (algo, mode)}
            scores[mode] = np.stack([normalise(e, algo, np.array([table[(e, s)] for s in sorted(seeds)]))
                                     for e in envs], axis=1)
        iqm = iqm_with_ci(scores, reps)
        rows.append({"algo": algo, "envs": envs, "seeds": len(seeds), "normalised": iqm,
                     **parity(iqm["hts"], iqm["sync"]), "profiles": performance_profiles(scores, reps)})
    return rows


def _ci(value: tuple[float, float, float], digits: int) -> str:
    return f"{value[0]:.{digits}f} [{value[1]:.{digits}f}, {value[2]:.{digits}f}]"


def markdown(per_env: list[dict[str, Any]], aggregate: list[dict[str, Any]]) -> str:
    lines = ["| env | algo | mode | seeds | IQM final return [95% CI] | normalised IQM [95% CI] | "
             "final >= target | mean | deterministic eval, mean | cell s | "
             "hts vs sync (normalised IQM, else raw) | CIs overlap |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in per_env:
        for mode in MODES:
            m = row[mode]
            norm = _ci(row["normalised"][mode], 3) if "normalised" in row else "-"
            target = "-" if m["reached_target"] is None else \
                f"{m['reached_target']}/{m['seeds']} (>= {TARGETS[row['env'], row['algo']]:g})"
            verdict = ["", ""]
            if mode == "hts" and "parity" in row:
                on_raw = " (raw)" if row["parity_on"] == "raw" else ""
                verdict = [f"{row['hts_vs_sync']:+.1%}{on_raw}", "yes" if row["cis_overlap"] else "no"]
            cell_s = "-" if m["cell_seconds_mean"] is None else f"{m['cell_seconds_mean']:.0f}"
            digits = 3 if abs(row["raw"][mode][0]) < 10 else 1  # MiniGrid's returns are below 1
            evaluated = "-" if m["eval_mean"] is None else f"{m['eval_mean']:.{digits}f}"
            lines.append(f"| {row['env']} | {row['algo']} | {mode} | {m['seeds']} | "
                         f"{_ci(row['raw'][mode], digits)} | {norm} | {target} | {m['mean']:.{digits}f} | "
                         f"{evaluated} | {cell_s} | {verdict[0]} | {verdict[1]} |")
    lines += ["", "| algo | envs | seeds | mode | normalised IQM [95% CI] | hts vs sync | CIs overlap |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in aggregate:
        for mode in MODES:
            verdict = [f"{row['hts_vs_sync']:+.1%}", "yes" if row["cis_overlap"] else "no"] \
                if mode == "hts" else ["", ""]
            lines.append(f"| {row['algo']} | {', '.join(row['envs'])} | {row['seeds']} | {mode} | "
                         f"{_ci(row['normalised'][mode], 3)} | {verdict[0]} | {verdict[1]} |")
    return "\n".join(lines) + "\n"


def mean_curve(runs: list[Run], axis: Callable[[tuple[int, float, float]], float],
               points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean return over seeds on a common grid of `axis` (env steps or seconds), up to where every
    seed has data, with a 95% normal-approximation band of the mean."""
    end = min(axis(r.curve[-1]) for r in runs)
    start = max(axis(r.curve[0]) for r in runs)
    grid = np.linspace(start, end, points)
    values = np.stack([np.interp(grid, [axis(p) for p in r.curve], [p[2] for p in r.curve])
                       for r in runs])
    mean = values.mean(axis=0)
    half = 1.96 * values.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else 0 * mean
    return grid, mean - half, mean + half


def plot_env(env: str, runs: list[Run], out: Path) -> None:
    """hts and sync mean curves per env step and per wall-clock second, one row per algorithm, with
    the published references as horizontal lines."""
    plt = pyplot()
    if plt is None:
        return
    algos = list(dict.fromkeys(r.algo for r in runs))
    fig, axes = plt.subplots(len(algos), 2, figsize=(12, 4 * len(algos)), squeeze=False)
    for (per_step, per_second), algo in zip(axes, algos):
        for mode in MODES:
            mode_runs = [r for r in runs if (r.algo, r.mode) == (algo, mode)]
            if not mode_runs:
                continue
            label = f"{mode} ({len(mode_runs)} seeds)"
            for ax, axis in ((per_step, lambda p: p[0]), (per_second, lambda p: p[1])):
                grid, low, high = mean_curve(mode_runs, axis)
                ax.plot(grid, (low + high) / 2, color=MODE_COLORS[mode], label=label)
                ax.fill_between(grid, low, high, color=MODE_COLORS[mode], alpha=0.2)
        for ref, style in zip(REFERENCES.get((env, algo), ()), ("--", ":")):
            for ax in (per_step, per_second):
                ax.axhline(ref.score, color="black", linestyle=style, linewidth=1,
                           label=f"{ref.source}: {ref.score:g}")
        for ax, xlabel in ((per_step, "env steps"), (per_second, "wall-clock seconds")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean return (last 100 episodes)")
            ax.set_title(f"{env} {algo.upper()}")
            ax.grid(alpha=0.3)
        per_step.legend(fontsize=8, loc="lower right")
    save(fig, out)
    plt.close(fig)


def plot_profiles(aggregate: list[dict[str, Any]], out: Path) -> None:
    """One panel per algorithm: hts and sync performance profiles over the suite's envs (rliable's
    score distributions, Agarwal et al. 2021, Figure 5), with their 95% bands."""
    plt = pyplot()
    if plt is None or not aggregate:
        return
    fig, axes = plt.subplots(1, len(aggregate), figsize=(6 * len(aggregate), 4), squeeze=False)
    for ax, row in zip(axes[0], aggregate):
        for mode in MODES:
            profile = row["profiles"][mode]
            ax.plot(PROFILE_TAUS, profile["fraction"], color=MODE_COLORS[mode], label=mode)
            ax.fill_between(PROFILE_TAUS, profile["low"], profile["high"], color=MODE_COLORS[mode],
                            alpha=0.2)
        ax.set_xlabel("normalised score τ (0: random policy, 1: published reference)")
        ax.set_ylabel("fraction of runs with score > τ")
        ax.set_title(f"{row['algo'].upper()}, {row['seeds']} seeds per mode\n{', '.join(row['envs'])}",
                     fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    save(fig, out)
    plt.close(fig)


def report(results: Path, plots: Path, reps: int) -> dict[str, Any]:
    """Write report.md and report.json into `results` and one PNG per env into `plots`."""
    runs = load_runs(results)
    per_env, aggregate = env_algo_rows(runs, reps), aggregate_rows(runs, reps)
    text = markdown(per_env, aggregate)
    (results / "report.md").write_text(text)
    (results / "report.json").write_text(json.dumps({"per_env": per_env, "aggregate": aggregate},
                                                    indent=1) + "\n")
    print(text)
    for env in dict.fromkeys(r.env for r in runs):
        plot_env(env, [r for r in runs if r.env == env], plots / f"learning-{env_slug(env)}.png")
    plot_profiles(aggregate, plots / "learning-profiles.png")
    return {"per_env": per_env, "aggregate": aggregate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--suite", choices=list(SUITES), default="default", help="which suite to run")
    parser.add_argument("--smoke", action="store_true", help="the CI suite (--suite smoke)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results folder (default: benchmarks/results/suite, or .../suite-<name>)")
    parser.add_argument("--envs", nargs="+", default=None, help="only these envs of the suite")
    parser.add_argument("--algos", nargs="+", default=None, choices=["ppo", "a2c"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="instead of the suite's")
    parser.add_argument("--total-steps", type=int, default=None, help="instead of the suite's budget")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once by this process")
    parser.add_argument("--workers", type=int, default=1, help="env worker processes per cell")
    parser.add_argument("--train-args", default="", help="extra `htsrl-aio train` flags for every cell")
    parser.add_argument("--no-eval", dest="evaluate", action="store_false",
                        help="do not play finished cells greedily (a later run without it does)")
    parser.add_argument("--plots", type=Path, default=None, help="PNG folder (default: <results>/plots)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args()
    suite = "smoke" if args.smoke else args.suite
    results = args.results or Path("benchmarks/results") / ("suite" if suite == "default"
                                                             else f"suite-{suite}")
    if args.command == "run":
        cells = plan_cells(SUITES[suite], args.envs, args.algos, args.modes, args.seeds, args.total_steps)
        print(f"{len(cells)} cells into {results}", flush=True)
        run_cells(cells, results, args.jobs, args.workers, shlex.split(args.train_args), args.evaluate)
    else:
        report(results, args.plots or results / "plots", args.reps)


if __name__ == "__main__":
    main()
