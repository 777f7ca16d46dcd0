"""GFootball step-time variance vs the hts/sync speedup, across scenarios (the paper's Figure 4, left).

For each scenario: the step time of one game with random actions (mean, standard deviation,
coefficient of variation, p99; render=False), then steady steps/s of the `football-ppo` preset in
hts and in sync mode, alternating. Prints one table and writes a PNG (speedup vs step-time spread).

    python benchmarks/football_variance.py --num-envs 16 --updates 3 \
        --plot docs/img/football_variance.png
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from football_scaling import steady_sps
from plotting import pyplot, save

from htsrl_aio import TrainConfig, train
from htsrl_aio.envs.football import FootballEnv, FootballSpec

SCENARIOS = ["academy_empty_goal_close", "academy_run_to_score", "academy_3_vs_1_with_keeper",
             "academy_counterattack_hard", "11_vs_11_easy_stochastic"]


def step_times_ms(scenario: str, steps: int, seed: int) -> np.ndarray:
    env = FootballEnv(FootballSpec(scenario))
    rng = np.random.default_rng(seed)
    times = []
    try:
        env.reset(seed=seed)
        for episode in range(1, steps + 1):
            action = int(rng.integers(env.action_space.n))
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            times.append(time.perf_counter() - start)
            if terminated or truncated:
                env.reset(seed=seed + episode)
    finally:
        env.close()
    return np.array(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS)
    parser.add_argument("--timing-steps", type=int, default=1000)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--rollout", type=int, default=128)
    parser.add_argument("--updates", type=int, default=3, help="updates per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/football_variance.png"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios:
            t = step_times_ms(scenario, args.timing_steps, args.seed)
            sps: dict[str, list[float]] = {"hts": [], "sync": []}
            for repeat in range(args.repeats):
                for mode in sps:
                    logdir = Path(tmp) / f"{scenario}-{mode}-{repeat}"
                    train(TrainConfig(env=f"gfootball/{scenario}", preset="football-ppo", mode=mode,
                                      num_envs=args.num_envs, rollout=args.rollout,
                                      total_steps=args.num_envs * args.rollout * args.updates,
                                      workers=args.workers, seed=args.seed, logdir=str(logdir),
                                      progress=False))
                    sps[mode].append(steady_sps(logdir))
            hts, sync = statistics.median(sps["hts"]), statistics.median(sps["sync"])
            rows.append({"scenario": scenario, "mean": t.mean(), "std": t.std(), "cv": t.std() / t.mean(),
                         "p99": np.percentile(t, 99), "hts": hts, "sync": sync, "speedup": hts / sync})
            r = rows[-1]
            print(f"  {scenario}: step {r['mean']:.2f} +- {r['std']:.2f} ms, hts {hts:.0f}, sync {sync:.0f} "
                  f"steps/s", flush=True)

    print(f"\nfootball-ppo, {args.num_envs} envs, rollout {args.rollout}, {args.updates} updates per run, "
          f"median of {args.repeats}; step times over {args.timing_steps} random steps")
    print(f"{'scenario':<30}{'step ms':>9}{'std ms':>8}{'cv':>6}{'p99 ms':>8}{'hts sps':>9}{'sync sps':>10}"
          f"{'hts/sync':>10}")
    for r in rows:
        print(f"{r['scenario']:<30}{r['mean']:>9.2f}{r['std']:>8.2f}{r['cv']:>6.2f}{r['p99']:>8.2f}"
              f"{r['hts']:>9.0f}{r['sync']:>10.0f}{r['speedup']:>9.2f}x")
    _plot(rows, args)


def _plot(rows: list[dict], args: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter([r["std"] for r in rows], [r["speedup"] for r in rows], color="tab:blue")
    for r in rows:
        ax.annotate(r["scenario"].replace("academy_", ""), (r["std"], r["speedup"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("step time standard deviation (ms)")
    ax.set_ylabel("hts / sync steady steps/s")
    ax.set_title(f"GFootball, football-ppo, {args.num_envs} envs", fontsize=10)
    save(fig, args.plot)


if __name__ == "__main__":
    main()
