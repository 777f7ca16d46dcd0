"""Wall-clock minutes to reach a score on GFootball, hts vs sync (a small-scale Table 2 of the paper).

Each run trains the `football-ppo` preset on one scenario with the `scoring` reward, so the score is
the mean episode return of the last 100 episodes (goals per episode, at most 1 in the academy), and
stops once the highest target is reached or at the step / minute cap. Runs alternate hts, sync per
seed. Each finished run is appended to `--results` (JSON lines), so an interrupted benchmark keeps
what it measured; `--report-only` prints the table and plot from that file.

    python benchmarks/football_table2.py --scenario academy_empty_goal_close --seeds 1 2 3 \
        --max-minutes 25 --results docs/football_table2.jsonl --plot docs/img/football_table2.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from plotting import football_id, pyplot, save

from htsrl_aio import TrainConfig, Trainer
from htsrl_aio.training import run_event_loop

# "hts-behaviour": hts with --ppo-trust-region behaviour (the released code's PPO; the default is current).
MODES = {"hts": ("hts", "current"), "sync": ("sync", "current"), "hts-behaviour": ("hts", "behaviour")}
COLORS = {"hts": "tab:blue", "sync": "tab:gray", "hts-behaviour": "tab:orange"}


async def run_until_score(args: argparse.Namespace, mode: str, seed: int, logdir: Path) -> dict:
    schedule, trust_region = MODES[mode]
    cfg = TrainConfig(env=football_id(args.source, args.scenario), preset="football-ppo", mode=schedule,
                      seed=seed,
                      num_envs=args.num_envs, total_steps=args.max_steps, workers=args.workers,
                      logdir=str(logdir), progress=False, ppo_trust_region=trust_region)
    reached: dict[str, list[float] | None] = {str(t): None for t in args.targets}
    curve = []
    async with Trainer(cfg) as trainer:
        async for m in trainer.updates():
            score, minutes = m["episode_return_mean"], m["wall_time_s"] / 60
            curve.append((minutes, m["global_step"], score))
            for target in args.targets:
                if score is not None and score >= target and reached[str(target)] is None:
                    reached[str(target)] = [minutes, m["global_step"]]
            if reached[str(max(args.targets))] is not None or minutes >= args.max_minutes:
                break  # leaving the context cancels the run cleanly
    return {"scenario": args.scenario, "mode": mode, "seed": seed, "num_envs": args.num_envs,
            "reached": reached, "curve": curve, "max_minutes": args.max_minutes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="academy_empty_goal_close")
    parser.add_argument("--source", default="envpool", choices=["envpool", "gfootball"],
                        help="EnvPool's GFootball (pip) or gfootball built from source")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--modes", nargs="+", default=["hts", "sync"], choices=list(MODES))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.8])
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=2_000_000)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/football_table2.jsonl"))
    parser.add_argument("--report-only", action="store_true", help="only print/plot what --results holds")
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/football_table2.png"))
    args = parser.parse_args()

    if not args.report_only:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                for mode in args.modes:
                    run = run_event_loop(run_until_score(args, mode, seed, Path(tmp) / f"{mode}-{seed}"))
                    with args.results.open("a") as f:
                        f.write(json.dumps(run) + "\n")
                    print(f"  {mode} seed {seed}: {run['reached']}", flush=True)
    runs = [json.loads(line) for line in args.results.read_text().splitlines()]
    runs = [r for r in runs if r["scenario"] == args.scenario]
    report(runs, args)
    _plot(runs, args)


def report(runs: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.scenario}, football-ppo ({runs[0]['num_envs']} envs): wall-clock minutes to reach each "
          f"score (mean of last 100 episodes); '>' = not reached within the cap")
    targets = list(runs[0]["reached"])
    print(f"{'mode':<12}{'seed':>5}" + "".join(f"{'score ' + t:>12}{'steps':>10}" for t in targets))
    medians: dict[tuple[str, str], float] = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        for r in mine:
            cells = ""
            for t in targets:
                hit = r["reached"][t]
                cells += (f"{hit[0]:>12.1f}{hit[1]:>10}" if hit else
                          f"{'>' + format(r['curve'][-1][0], '.1f'):>12}{'>' + str(r['curve'][-1][1]):>10}")
            print(f"{mode:<12}{r['seed']:>5}{cells}")
        for t in targets:
            hits = [r["reached"][t][0] for r in mine if r["reached"][t]]
            if mine and len(hits) == len(mine):
                medians[(mode, t)] = statistics.median(hits)
    for t in targets:
        if ("hts", t) in medians and ("sync", t) in medians:
            print(f"score {t}: median {medians[('hts', t)]:.1f} min (hts) vs {medians[('sync', t)]:.1f} min "
                  f"(sync): hts {medians[('sync', t)] / medians[('hts', t)]:.2f}x sooner")


def _plot(runs: list[dict], args: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for r in runs:
        pts = [(m, steps, s) for m, steps, s in r["curve"] if s is not None]
        style = {"color": COLORS[r["mode"]], "lw": 1.2,
                 "label": f"{r['mode']} seed {r['seed']}"}
        axes[0].plot([p[0] for p in pts], [p[2] for p in pts], **style)
        axes[1].plot([p[1] / 1000 for p in pts], [p[2] for p in pts], **style)
    for ax in axes:
        for t in args.targets:
            ax.axhline(t, color="black", lw=0.6, ls=":")
    axes[0].set_xlabel("wall-clock minutes")
    axes[1].set_xlabel("env steps (thousands)")
    axes[0].set_ylabel("score (mean return, last 100 episodes)")
    axes[0].set_title(f"{args.scenario}, football-ppo", fontsize=10)
    axes[1].legend(fontsize=7)
    save(fig, args.plot)


if __name__ == "__main__":
    main()
