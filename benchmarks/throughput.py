"""Steps/s of hts mode vs sync mode, side by side, on one machine.

Runs the same configuration in both modes, alternating (hts, sync, hts, sync, ...) so that machine
load drifts hit both equally, and reports the median of each plus their ratio, with the busy
fractions that explain it. Prints one table and writes a PNG (matplotlib, from the `bench` extra).

    python benchmarks/throughput.py --env CartPole-v1 --algo ppo --total-steps 100000 --repeats 3

Parameterised so the same script runs on a many-core or GPU machine (--num-envs, --workers,
--device, --learner ...).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym

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


def run_once(args: argparse.Namespace, mode: str, logdir: Path) -> dict:
    env = args.env
    if args.step_delay_ms:
        env = functools.partial(delayed_env, args.env, args.step_delay_ms / 1000)
    cfg = TrainConfig(env=env, algo=args.algo, mode=mode, num_envs=args.num_envs, rollout=args.rollout,
                      total_steps=args.total_steps, workers=args.workers, device=args.device,
                      learner=args.learner, seed=args.seed, logdir=str(logdir), progress=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
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

    results: dict[str, list[dict]] = {"hts": [], "sync": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in ("hts", "sync"):
                results[mode].append(run_once(args, mode, Path(tmp) / f"{mode}{repeat}"))

    med = {mode: {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "return"}
           for mode, runs in results.items()}
    delay = f", exp. step delay {args.step_delay_ms} ms" if args.step_delay_ms else ""
    print(f"{args.env}{delay} {args.algo}, {args.num_envs} envs, {args.total_steps} steps, "
          f"{args.repeats} alternating repeats (median)")
    print(f"{'mode':<6}{'steps/s':>10}{'steady steps/s':>16}{'learner busy':>14}{'collector busy':>16}")
    for mode in ("hts", "sync"):
        m = med[mode]
        print(f"{mode:<6}{m['sps']:>10.0f}{m['steady_sps']:>16.0f}{m['learner_busy']:>14.2f}"
              f"{m['collector_busy']:>16.2f}")
    print(f"hts/sync: {med['hts']['sps'] / med['sync']['sps']:.2f}x end to end, "
          f"{med['hts']['steady_sps'] / med['sync']['steady_sps']:.2f}x steady")
    _plot(results, args)


def _plot(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: install the bench extra (pip install -e '.[bench]') for matplotlib")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, mode in enumerate(("hts", "sync")):
        values = [r["steady_sps"] for r in results[mode]]
        ax.bar(i, statistics.median(values), color=["tab:blue", "tab:gray"][i])
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks([0, 1], ["hts", "sync"])
    ax.set_ylabel("steady env steps/s")
    ax.set_title(f"{args.env} {args.algo}, {args.num_envs} envs")
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
