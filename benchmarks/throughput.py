"""Steps/s of two variants of one configuration, side by side, on one machine.

`--vary mode` (default): hts vs sync. `--vary deterministic`: fixed-shape inference blocks (the
default) vs the fastest non-deterministic batching (each batch at its own size, `--no-deterministic`).
`--vary learner`: learner process vs learner thread. `--vary block`: 8-row inference blocks (every
run's before 2026-12-06) vs the run's default block (`config.default_inference_block`). `--vary mkl`:
MKL's strict reproducible mode (the default, `MKL_CBWR=AUTO,STRICT`) vs MKL's own kernel choices
(`MKL_CBWR=` empty), each run in a fresh process, since MKL reads the setting when it first runs.

Variants alternate (a, b, a, b, ...) so that machine load drifts hit both equally; the table shows the
median of each, their ratio, and the busy fractions that explain it. Prints one table and writes a PNG
(matplotlib, from the `bench` extra).

    python benchmarks/throughput.py --env CartPole-v1 --algo ppo --total-steps 100000 --repeats 3
    python benchmarks/throughput.py --vary deterministic --mode hts

Parameterised so the same script runs on a many-core or GPU machine (--num-envs, --workers,
--device, --learner ...).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import gymnasium as gym
from plotting import pyplot, save

from htsrl_aio import TrainConfig, train


class ExponentialStepDelay(gym.Wrapper):
    """Each step sleeps an exponential time (mean `mean_s`), like the paper's Claim 1 model."""

    def __init__(self, env: gym.Env, mean_s: float) -> None:
        super().__init__(env)
        self.mean_s = mean_s
        self.noise = random.SystemRandom()  # timing noise stays outside every seed

    def step(self, action):
        time.sleep(self.noise.expovariate(1.0 / self.mean_s))
        return super().step(action)


def delayed_env(env_id: str, mean_s: float) -> gym.Env:
    return ExponentialStepDelay(gym.make(env_id), mean_s)


VARIANTS: dict[str, list[tuple[str, dict]]] = {
    "mode": [("hts", {"mode": "hts"}), ("sync", {"mode": "sync"})],
    "deterministic": [("deterministic", {"deterministic": True}), ("fastest", {"deterministic": False})],
    "learner": [("process", {"learner": "process"}), ("thread", {"learner": "thread"})],
    "mkl": [("strict", {}), ("off", {})],
    "block": [("block 8", {"inference_block": 8}), ("default block", {})],
}
# Environment variables of the variants that need a fresh process each.
PROCESS_ENV: dict[str, dict[str, str]] = {"strict": {"MKL_CBWR": "AUTO,STRICT"}, "off": {"MKL_CBWR": ""}}


def run_once(args: argparse.Namespace, overrides: dict, logdir: Path) -> dict:
    env = args.env
    if args.step_delay_ms:
        env = functools.partial(delayed_env, args.env, args.step_delay_ms / 1000)
    settings = {"env": env, "algo": args.algo, "mode": args.mode, "num_envs": args.num_envs,
                "rollout": args.rollout, "total_steps": args.total_steps, "workers": args.workers,
                "device": args.device, "learner": args.learner, "seed": args.seed, **overrides}
    cfg = TrainConfig(**settings, logdir=str(logdir), progress=False)
    summary = train(cfg)
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 10:]  # skip warm-up (process start, first updates)
    return {
        "sps": summary["sps"],
        "steady_sps": (steady[-1]["global_step"] - steady[0]["global_step"])
        / (steady[-1]["wall_time_s"] - steady[0]["wall_time_s"]),
        "learner_busy": statistics.mean(r["learner_busy_frac"] for r in steady),
        "collector_busy": statistics.mean(r["collector_busy_frac"] for r in steady),
        "return": summary["episode_return_mean"],
    }


def run_in_fresh_process(args: argparse.Namespace, overrides: dict, logdir: Path,
                         env: dict[str, str]) -> dict:
    """`run_once` in a new process that starts with `env` in its environment."""
    fresh = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with mock.patch.dict(os.environ, env), fresh as pool:
        return pool.submit(run_once, args, overrides, logdir).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vary", default="mode", choices=sorted(VARIANTS))
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--mode", default="hts", choices=["hts", "sync"], help="when not varied")
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c"])
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rollout", type=int, default=None)
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--learner", default="process", choices=["process", "thread"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--step-delay-ms", type=float, default=0.0,
                        help="mean of an exponential sleep added to every env step (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/throughput.png"))
    args = parser.parse_args()

    variants = VARIANTS[args.vary]
    results: dict[str, list[dict]] = {label: [] for label, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for label, overrides in variants:
                logdir = Path(tmp) / f"{label}{repeat}"
                if label in PROCESS_ENV:
                    results[label].append(run_in_fresh_process(args, overrides, logdir, PROCESS_ENV[label]))
                else:
                    results[label].append(run_once(args, overrides, logdir))

    med = {label: {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "return"}
           for label, runs in results.items()}
    delay = f", exp. step delay {args.step_delay_ms} ms" if args.step_delay_ms else ""
    fixed = "" if args.vary == "mode" else f" {args.mode} mode,"
    print(f"{args.env}{delay} {args.algo},{fixed} {args.num_envs} envs, {args.total_steps} steps, "
          f"{args.repeats} alternating repeats (median)")
    print(f"{args.vary:<14}{'steps/s':>10}{'steady steps/s':>16}{'learner busy':>14}{'collector busy':>16}")
    for label, _ in variants:
        m = med[label]
        print(f"{label:<14}{m['sps']:>10.0f}{m['steady_sps']:>16.0f}{m['learner_busy']:>14.2f}"
              f"{m['collector_busy']:>16.2f}")
    (a, _), (b, _) = variants
    print(f"{a}/{b}: {med[a]['sps'] / med[b]['sps']:.2f}x end to end, "
          f"{med[a]['steady_sps'] / med[b]['steady_sps']:.2f}x steady")
    _plot(results, args)


def _plot(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = list(results)
    for i, label in enumerate(labels):
        values = [r["steady_sps"] for r in results[label]]
        ax.bar(i, statistics.median(values), color=["tab:blue", "tab:gray"][i])
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("steady env steps/s")
    delay = f", step delay exp({args.step_delay_ms} ms)" if args.step_delay_ms else ""
    ax.set_title(f"{args.env} {args.algo}, {args.num_envs} envs{delay}", fontsize=10)
    save(fig, args.plot, dpi=120)


if __name__ == "__main__":
    main()
