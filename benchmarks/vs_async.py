"""htsrl-aio hts and sync against real asynchronous learners: Sample Factory 2 APPO and RLlib APPO.

Same task, same machine, same number of envs and env processes, same network, same wall-clock budget
per run (`--seconds`, counted from each learner's process start), runs alternating
(hts, sync, sf, rllib, hts, ...) over `--seeds`. Each run is a subprocess of benchmarks/vs_async_runs.py
under its learner's Python (that file says what each learner is given). Tasks (`--tasks`):

- latency-cartpole: the paper's regime, CartPole-v1 whose every step sleeps an exponential delay of mean
  `--latency-ms` (in each learner's env processes: `--workers` of them, `--num-envs` envs in all);
- pong: ALE/Pong-v5 with the atari-ppo preset's preprocessing and the Nature CNN;
- football: GFootball's academy_empty_goal_close (the paper's benchmark) with the simple115v2 vector and
  the football-ppo preset's settings; gfootball is built into each learner's venv by
  scripts/install-football.sh (once; it does nothing when gfootball imports).

Reported per task and learner: steady env steps/s (the first 10% of each run's rows skipped), episode
return at the budget (IQM over seeds with a 95% percentile-bootstrap CI), on football the wall-clock
seconds and env steps to a score of 0.8 (the HTS-RL paper's Table 2 measure), the policy lag it ran at (in
updates: Sample Factory's SGD-step lag divided by epochs x minibatches), and reproducibility: one config
(seed 1) run twice for `--repro-steps` env steps, identical parameters (sha256) or not. Curves against
wall-clock and env steps go to `--plots`, everything to `--out` (JSON), and the table is printed.

Sample Factory and RLlib pin other numpy/gymnasium versions than htsrl-aio, so each has a virtual
environment of its own, made by this script when missing (`--sf-venv`, `--rllib-venv`):

    python3 -m venv .venvs/sf
    .venvs/sf/bin/pip install torch==2.13.0 "sample-factory==2.1.1" "gymnasium[atari]<1.0" \
        "numpy<2" "ale-py==0.9.*"
    python3 -m venv .venvs/rllib
    .venvs/rllib/bin/pip install torch==2.13.0 "ray[rllib]==2.60.0" "ale-py==0.12.*" \
        opencv-python-headless

    python benchmarks/vs_async.py --smoke                      # every learner ~20 s on each task
    python benchmarks/vs_async.py --tasks latency-cartpole --seconds 300 --seeds 1 2 3 4 5
    python benchmarks/vs_async.py --tasks pong --seconds 1800 --seeds 1 2 3
    python benchmarks/vs_async.py --tasks football --seconds 180 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from plotting import pyplot, save
from scipy import stats

HERE = Path(__file__).resolve().parent
RUNS = HERE / "vs_async_runs.py"
LEARNERS = ("hts", "sync", "sf", "rllib")
VENV_PACKAGES = {
    "sf": ["torch==2.13.0", "sample-factory==2.1.1", "gymnasium[atari]<1.0", "numpy<2", "ale-py==0.9.*"],
    "rllib": ["torch==2.13.0", "ray[rllib]==2.60.0", "ale-py==0.12.*", "opencv-python-headless"],
}


def ensure_venv(venv: Path, packages: list[str]) -> Path:
    """The venv's python, after creating the venv with `packages` if it is not there yet."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} for {' '.join(packages)} (once; minutes)")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


def ensure_football(python: str) -> None:
    """gfootball in the venv of `python`, by the project's install script (a no-op once it imports)."""
    subprocess.run(["bash", str(HERE.parent / "scripts" / "install-football.sh")],
                   env={**os.environ, "PYTHON": python}, check=True, stdout=subprocess.DEVNULL)


def run_one(args: argparse.Namespace, python: str, learner: str, task: str, seed: int, logdir: Path,
            budget: list[str]) -> dict[str, Any]:
    """One run in its own process; its rows and summary, or the error it ended with."""
    cmd = [python, str(RUNS), learner, "--task", task, "--logdir", str(logdir), "--seed", str(seed),
           "--num-envs", str(args.num_envs), "--workers", str(args.workers),
           "--latency-ms", str(args.latency_ms), *budget]
    path = [str(HERE), str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    logdir.mkdir(parents=True, exist_ok=True)
    with open(logdir / "output.log", "w") as out:
        rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = (logdir / "output.log").read_text().strip().splitlines()[-3:]
        print(f"  {learner} {task} seed {seed} failed ({rc}): {' | '.join(tail)}")
        return {"error": f"exit status {rc}", "log": str(logdir / "output.log"), "rows": []}
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return {**json.loads((logdir / "summary.json").read_text()), "rows": rows}


def steady_sps(rows: list[dict]) -> float | None:
    rows = rows[len(rows) // 10:]
    if len(rows) < 2 or rows[-1]["wall_time_s"] <= rows[0]["wall_time_s"]:
        return None
    first, last = rows[0], rows[-1]
    return (last["global_step"] - first["global_step"]) / (last["wall_time_s"] - first["wall_time_s"])


def return_at(rows: list[dict], seconds: float) -> float | None:
    """The last episode_return_mean logged within the budget (None: no episode ended in it)."""
    values = [r["episode_return_mean"] for r in rows
              if r["wall_time_s"] <= seconds and r["episode_return_mean"] is not None]
    return values[-1] if values else None


# Tasks measured by the time to a return, as the HTS-RL paper's Table 2 measures GFootball: once every
# learner saturates within the budget, the return at the budget no longer tells them apart.
TARGET_RETURNS = {"football": 0.8}


def time_to(rows: list[dict], target: float) -> tuple[float, int] | None:
    """(wall-clock seconds, env steps) of the first row whose return reached `target`; None: never."""
    return next(((r["wall_time_s"], r["global_step"]) for r in rows
                 if r["episode_return_mean"] is not None and r["episode_return_mean"] >= target), None)


def iqm_ci(values: list[float]) -> dict[str, Any]:
    """Interquartile mean with a 95% percentile-bootstrap CI (none from fewer than 2 distinct values)."""
    if not values:
        return {"iqm": None, "ci": None, "n": 0}
    iqm = float(stats.trim_mean(values, 0.25))
    if len(set(values)) < 2:
        return {"iqm": iqm, "ci": None, "n": len(values)}
    ci = stats.bootstrap((np.asarray(values),), lambda x, axis: stats.trim_mean(x, 0.25, axis=axis),
                         confidence_level=0.95, method="percentile", n_resamples=2000, random_state=0)
    return {"iqm": iqm, "ci": [float(ci.confidence_interval.low), float(ci.confidence_interval.high)],
            "n": len(values)}


def summarise(runs: list[dict], seconds: float, target: float | None = None) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    reached = [time_to(r["rows"], target) for r in ok] if target is not None else []
    sps = [s for s in (steady_sps(r["rows"]) for r in ok) if s is not None]
    lags = [r["policy_lag_updates"]["avg"] for r in ok if r.get("policy_lag_updates")]
    ends = [r["rows"][-1] for r in ok if r["rows"]]
    return {"runs": len(runs), "failed": len(runs) - len(ok),
            # where the runs got to: past the budget, since each stops at its first check after it
            "end_steps": float(np.mean([e["global_step"] for e in ends])) if ends else None,
            "end_s": float(np.mean([e["wall_time_s"] for e in ends])) if ends else None,
            "steady_sps": float(np.mean(sps)) if sps else None,
            "return": iqm_ci([v for v in (return_at(r["rows"], seconds) for r in ok) if v is not None]),
            "policy_lag_updates": float(np.mean(lags)) if lags else None,
            "lag_note": ok[0].get("lag_note") if ok else None,
            # per run, in seed order: [seconds, steps] to the target return, None where never reached
            "target_return": target, "time_to_target": reached}


def reproducibility(args: argparse.Namespace, pythons: dict[str, str], task: str,
                    tmp: Path) -> dict[str, Any]:
    """Seed 1 run twice for --repro-steps env steps per learner: same final parameters and returns or not."""
    out = {}
    for learner in args.learners:
        pair = [run_one(args, pythons[learner], learner, task, 1, tmp / f"repro-{task}-{learner}-{i}",
                        ["--steps", str(args.repro_steps)]) for i in (1, 2)]
        hashes = [p.get("final_params_sha256") for p in pair]
        returns = [[r["episode_return_mean"] for r in p["rows"]] for p in pair]
        identical = None if None in hashes else hashes[0] == hashes[1] and returns[0] == returns[1]
        out[learner] = {"identical": identical, "params_sha256": hashes,
                        "steps": [p.get("steps") for p in pair]}
    return out


def print_table(task: str, summary: dict[str, dict], repro: dict[str, dict], seconds: float) -> None:
    print(f"\n### {task}: {seconds:.0f} s per run\n")
    target = next(iter(summary.values()))["target_return"] if summary else None
    to_target = f" time to {target} (s; steps), per seed |" if target is not None else ""
    print("| learner | runs (failed) | steps at end (s) | steady steps/s | return IQM at budget [95% CI] "
          f"|{to_target} policy lag (updates) | same bits twice |")
    print("|---|---|---|---|---|" + ("---|" if target is not None else "") + "---|---|")
    for learner, s in summary.items():
        sps = f"{s['steady_sps']:.0f}" if s["steady_sps"] is not None else "-"
        ret = s["return"]
        value = "-" if ret["iqm"] is None else f"{ret['iqm']:.2f}"
        if ret["ci"] is not None:
            value += f" [{ret['ci'][0]:.2f}, {ret['ci'][1]:.2f}]"
        lag = f"{s['policy_lag_updates']:.2f}" if s["policy_lag_updates"] is not None else "not logged"
        same = {True: "yes", False: "no", None: "-"}[repro.get(learner, {}).get("identical")]
        end = "-" if s["end_steps"] is None else f"{s['end_steps']:.0f} ({s['end_s']:.0f})"
        cells = [learner, f"{s['runs']} ({s['failed']})", end, sps, value]
        if target is not None:
            cells.append(", ".join("never" if t is None else f"{t[0]:.0f}; {t[1]:,}"
                                   for t in s["time_to_target"]))
        print("| " + " | ".join([*cells, lag, same]) + " |")


def plot(task: str, runs: dict[str, list[dict]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for color, (learner, learner_runs) in zip(("C0", "C1", "C2", "C3"), runs.items()):
        for i, run in enumerate(learner_runs):
            rows = [r for r in run["rows"] if r["episode_return_mean"] is not None]
            label = learner if i == 0 else None
            y = [r["episode_return_mean"] for r in rows]
            axes[0].plot([r["wall_time_s"] for r in rows], y, ".-", color=color, alpha=0.7, label=label)
            axes[1].plot([r["global_step"] for r in rows], y, ".-", color=color, alpha=0.7, label=label)
    for ax, xlabel in zip(axes, ("wall-clock seconds since process start", "env steps")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("episode return (mean of the last 100)")
        ax.legend()
    fig.suptitle(task)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=["latency-cartpole", "pong", "football"],
                        default=["latency-cartpole", "pong"])
    parser.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    parser.add_argument("--seconds", type=float, default=300, help="wall-clock budget of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="env processes of every learner")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="mean step delay of latency-cartpole")
    parser.add_argument("--repro-steps", type=int, default=20_000,
                        help="env steps of the runs made twice (0: none)")
    parser.add_argument("--smoke", action="store_true",
                        help="20 s per run, seed 1, reproducibility on the first task only, 2,048 steps")
    parser.add_argument("--sf-venv", type=Path, default=HERE.parent / ".venvs" / "sf")
    parser.add_argument("--rllib-venv", type=Path, default=HERE.parent / ".venvs" / "rllib")
    parser.add_argument("--runs", type=Path, default=Path("runs/vs_async"), help="run directories")
    parser.add_argument("--out", type=Path, default=Path("runs/vs_async/results.json"))
    parser.add_argument("--plots", type=Path, default=Path("docs/img"), help="PNG folder")
    parser.add_argument("--report", type=Path, default=None,
                        help="only print the tables and draw the plots of an earlier --out file again")
    args = parser.parse_args()
    if args.report is not None:
        earlier = json.loads(args.report.read_text())
        seconds = earlier["settings"]["seconds"]
        for task, result in earlier["tasks"].items():
            summary = {learner: summarise(runs, seconds, TARGET_RETURNS.get(task))
                       for learner, runs in result["runs"].items()}
            print_table(task, summary, result["reproducibility"], seconds)
            plot(task, result["runs"], args.plots / f"vs_async_{task}.png")
        return
    if args.smoke:
        args.seconds, args.seeds, args.repro_steps = 20, [1], 2048
    if args.num_envs % args.workers:
        parser.error(f"--num-envs {args.num_envs} must be a multiple of --workers {args.workers}")

    pythons = {"hts": sys.executable, "sync": sys.executable}
    if "sf" in args.learners:
        pythons["sf"] = str(ensure_venv(args.sf_venv, VENV_PACKAGES["sf"]))
    if "rllib" in args.learners:
        pythons["rllib"] = str(ensure_venv(args.rllib_venv, VENV_PACKAGES["rllib"]))
    if "football" in args.tasks:
        for python in set(pythons.values()):
            ensure_football(python)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict[str, Any] = {"settings": settings, "load_average": os.getloadavg(), "tasks": {}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for t, task in enumerate(args.tasks):
        runs: dict[str, list[dict]] = {learner: [] for learner in args.learners}
        for seed in args.seeds:
            for learner in args.learners:  # alternating, so a drift in the machine's load hits all alike
                print(f"{task}: {learner} seed {seed}", flush=True)
                runs[learner].append(run_one(args, pythons[learner], learner, task, seed,
                                             args.runs / stamp / f"{task}-{learner}-s{seed}",
                                             ["--seconds", str(args.seconds)]))
        repro = (reproducibility(args, pythons, task, args.runs / stamp)
                 if args.repro_steps and (t == 0 or not args.smoke) else {})
        summary = {learner: summarise(learner_runs, args.seconds, TARGET_RETURNS.get(task))
                   for learner, learner_runs in runs.items()}
        results["tasks"][task] = {"summary": summary, "reproducibility": repro, "runs": runs}
        print_table(task, summary, repro, args.seconds)
        plot(task, runs, args.plots / f"vs_async_{task}.png")
    results["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {args.out}; load average at start {results['load_average'][0]:.1f}, "
          f"at end {results['load_average_end'][0]:.1f} ({os.cpu_count()} cores)")
    for task, result in results["tasks"].items():
        for learner, s in result["summary"].items():
            if s["lag_note"]:
                print(f"lag, {task}, {learner}: {s['lag_note']}")


if __name__ == "__main__":
    main()
