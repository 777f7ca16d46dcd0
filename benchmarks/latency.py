"""The paper's regime: n in-loop envs whose steps await exponential delays, hts vs sync, vs the ideal.

For every (n, alpha), both modes run `--steps-per-env` steps per env, in rollouts of `alpha` steps.
Each env step awaits an exponential delay with mean `--latency-ms` (by default scaled with n, so that
the ideal stays within what one event loop can dispatch); the policy is a tiny MLP trained with A2C so
that learning costs next to nothing. Measured steps/s are shown next to the ideal schedules, simulated
from the same model as the paper's Claim 1 (the Claim 1 closed form is printed too):

- ideal hts: each round costs the maximum over n envs of a sum of alpha exponentials (Gamma(alpha));
- ideal sync: each of the alpha steps of a round costs the maximum of n exponentials.

    python benchmarks/latency.py                                  # the default grid, a few minutes
    python benchmarks/latency.py --n 16 64 256 1024 --alpha 1 4 16 64 128   # the issue's full grid

Writes a table and a PNG like the paper's Figure 3 (runtime vs alpha; runtime vs latency variance).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
from plotting import pyplot, save
from scipy import stats

from htsrl_aio import TrainConfig, Trainer
from htsrl_aio.training import run_event_loop

EULER_GAMMA = 0.5772156649


class LatencyEnv:
    """An AsyncEnv that does nothing but wait: its step awaits an exponential (or Gamma) delay."""

    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, mean_s: float, shape: float = 1.0) -> None:
        self.mean_s = mean_s
        self.shape = shape  # Gamma shape: 1 is exponential; larger is less variable at the same mean
        self.noise = random.Random()  # timing noise stays outside every seed
        self.obs = np.zeros(4, np.float32)

    async def reset(self, *, seed=None, options=None):
        return self.obs, {}

    async def step(self, action):
        await asyncio.sleep(self.noise.gammavariate(self.shape, self.mean_s / self.shape))
        return self.obs, 0.0, False, False, {}


def ideal_seconds(n: int, alpha: int, rounds: int, mean_s: float, shape: float, mode: str,
                  samples: int = 4000) -> float:
    """Monte-Carlo expected runtime of the schedule alone (no compute), as in Claim 1."""
    rng = np.random.default_rng(0)
    scale = mean_s / shape
    if mode == "hts":  # one barrier per round: the slowest env's sum of alpha step times
        per_round = rng.gamma(shape * alpha, scale, size=(samples, n)).max(axis=1).mean()
    else:  # a barrier after every step: alpha times the slowest of n step times
        per_round = alpha * rng.gamma(shape, scale, size=(samples, n)).max(axis=1).mean()
    return rounds * float(per_round)


def claim1_seconds(n: int, alpha: int, rounds: int, mean_s: float) -> float:
    """The paper's closed form for exponential steps (rate beta), K = rounds * n * alpha steps, c = 0."""
    beta = 1.0 / mean_s
    q = stats.gamma.ppf(1 - 1 / n, alpha, scale=1 / beta)
    return rounds * (q + (EULER_GAMMA / beta) * (1 + (alpha - 1) / (beta * q)))


async def measure(n: int, alpha: int, rounds: int, mean_s: float, shape: float, mode: str,
                  logdir: Path) -> float:
    config = TrainConfig(env=lambda: LatencyEnv(mean_s, shape), algo="a2c", mode=mode, num_envs=n,
                         rollout=alpha, total_steps=n * alpha * rounds, hidden=(8,), max_batch=max(n, 8),
                         inference_block=64, logdir=str(logdir), progress=False)
    async with Trainer(config) as trainer:
        summary = await trainer.run()
    return summary["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--alpha", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--steps-per-env", type=int, default=64,
                        help="env steps per env in each run, rounded up to whole rollouts")
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="mean step latency (default: max(5, n/10) ms, so one loop keeps up)")
    parser.add_argument("--variance-n", type=int, default=64, help="n for the variance sweep")
    parser.add_argument("--variance-alpha", type=int, default=16, help="alpha for the variance sweep")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/latency.png"))
    args = parser.parse_args()

    rows = []
    print(f"{'n':>5}{'alpha':>6}{'lat ms':>7}{'mode':>6}{'steps/s':>9}{'ideal':>9}{'of ideal':>9}"
          f"{'claim1':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            mean_s = (args.latency_ms if args.latency_ms else max(5.0, n / 10)) / 1000
            for alpha in args.alpha:
                rounds = math.ceil(args.steps_per_env / alpha)
                for mode in ("hts", "sync"):
                    seconds = run_event_loop(measure(n, alpha, rounds, mean_s, 1.0, mode,
                                                     Path(tmp) / f"{n}-{alpha}-{mode}"))
                    ideal = ideal_seconds(n, alpha, rounds, mean_s, 1.0, mode)
                    if mode == "hts":
                        claim1 = claim1_seconds(n, alpha, rounds, mean_s)
                    else:  # a barrier every step: alpha = 1, repeated alpha times per round
                        claim1 = alpha * claim1_seconds(n, 1, rounds, mean_s)
                    steps = n * alpha * rounds
                    rows.append({"n": n, "alpha": alpha, "mode": mode, "seconds": seconds, "ideal": ideal,
                                 "steps_per_env": alpha * rounds})
                    print(f"{n:>5}{alpha:>6}{mean_s * 1000:>7.1f}{mode:>6}{steps / seconds:>9.0f}"
                          f"{steps / ideal:>9.0f}{ideal / seconds:>9.0%}{steps / claim1:>9.0f}")
        variance = _variance_sweep(args, Path(tmp))
    _plot(rows, variance, args)


def _variance_sweep(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Same mean latency, less or more variable (Gamma shape 4, 1, 0.25): speedup grows with variance."""
    n, alpha, mean_s = args.variance_n, args.variance_alpha, max(5.0, args.variance_n / 10) / 1000
    rounds = math.ceil(args.steps_per_env / alpha)
    out = []
    print(f"\nvariance sweep: n={n}, alpha={alpha}, mean latency {mean_s * 1000:.1f} ms")
    print(f"{'cv':>6}{'hts s':>8}{'sync s':>8}{'speedup':>9}")
    for shape in (4.0, 1.0, 0.25):
        seconds = {mode: run_event_loop(measure(n, alpha, rounds, mean_s, shape, mode,
                                                tmp / f"var-{shape}-{mode}")) for mode in ("hts", "sync")}
        cv = 1 / math.sqrt(shape)
        out.append({"cv": cv, **seconds})
        speedup = seconds["sync"] / seconds["hts"]
        print(f"{cv:>6.2f}{seconds['hts']:>8.2f}{seconds['sync']:>8.2f}{speedup:>8.2f}x")
    return out


def _plot(rows: list[dict], variance: list[dict], args: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for n in args.n:
        for mode, style in (("hts", "-o"), ("sync", "--s")):
            sel = [r for r in rows if r["n"] == n and r["mode"] == mode]
            steps_per_env = [r["steps_per_env"] for r in sel]
            left.plot([r["alpha"] for r in sel], [r["seconds"] / s for r, s in zip(sel, steps_per_env)],
                      style, label=f"{mode} n={n}")
            if mode == "hts":
                left.plot([r["alpha"] for r in sel], [r["ideal"] / s for r, s in zip(sel, steps_per_env)],
                          ":", color="gray")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("sync interval alpha (steps per rollout)")
    left.set_ylabel("wall seconds per step of each env (dotted: ideal hts)")
    left.legend(fontsize=7)
    right.plot([v["cv"] for v in variance], [v["hts"] for v in variance], "-o", label="hts")
    right.plot([v["cv"] for v in variance], [v["sync"] for v in variance], "--s", label="sync")
    right.set_xlabel("coefficient of variation of step latency")
    right.set_ylabel("runtime (s)")
    right.set_title(f"n={args.variance_n}, alpha={args.variance_alpha}", fontsize=9)
    right.legend()
    save(fig, args.plot, dpi=110)


if __name__ == "__main__":
    main()
