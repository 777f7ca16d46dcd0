"""GFootball steps/s vs number of envs, hts vs sync (a small-scale Figure 4, right, of the paper).

Every run uses the paper's PPO preset (`football-ppo`) with `--num-envs` changed; modes alternate
(hts, sync, hts, sync, ...) at each env count so that load drifts hit both. "steady steps/s" counts
from the end of the first update to the end of the last (process start and env creation excluded).
Prints one table and writes a PNG (matplotlib, from the `bench` extra).

    python benchmarks/football_scaling.py --num-envs 4 8 16 32 --updates 4 \
        --plot docs/img/football_scaling.png

Parameterised for bigger machines (--workers, --device, --rollout, --scenario, --representation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from plotting import football_id, pyplot, save

from htsrl_aio import TrainConfig, train

PAPER_SPS = {4: (200, 100), 16: (800, 210), 32: (1520, 270)}  # (HTS-RL, PPO), approx., many-core machine


def steady_sps(logdir: Path) -> float:
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    return (last["global_step"] - first["global_step"]) / (last["wall_time_s"] - first["wall_time_s"])


def run_once(args: argparse.Namespace, num_envs: int, mode: str, logdir: Path) -> dict:
    cfg = TrainConfig(env=football_id(args.source, args.scenario),
                      football_representation=args.representation,
                      preset="football-ppo", mode=mode, num_envs=num_envs, rollout=args.rollout,
                      total_steps=num_envs * args.rollout * args.updates, workers=args.workers,
                      device=args.device, seed=args.seed, logdir=str(logdir), progress=False)
    summary = train(cfg)
    return {"sps": summary["sps"], "steady_sps": steady_sps(logdir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="academy_counterattack_hard")
    parser.add_argument("--source", default="envpool", choices=["envpool", "gfootball"],
                        help="EnvPool's GFootball (pip) or gfootball built from source")
    parser.add_argument("--representation", default="simple115v2", choices=["simple115v2", "extracted"])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--rollout", type=int, default=128)
    parser.add_argument("--updates", type=int, default=4, help="updates per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/football_scaling.png"))
    args = parser.parse_args()

    results: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.num_envs:
            for repeat in range(args.repeats):
                for mode in ("hts", "sync"):
                    run = run_once(args, n, mode, Path(tmp) / f"{n}-{mode}-{repeat}")
                    results.setdefault((n, mode), []).append(run)
                    print(f"  {n} envs {mode}: {run['steady_sps']:.0f} steady steps/s", flush=True)

    med = {key: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for key, runs in results.items()}
    print(f"\n{args.scenario} ({args.representation}), football-ppo, rollout {args.rollout}, {args.updates} "
          f"updates per run, median of {args.repeats}")
    print(f"{'envs':>5}{'hts steps/s':>13}{'sync steps/s':>14}{'hts/sync':>10}{'paper hts':>11}"
          f"{'paper PPO':>11}")
    for n in args.num_envs:
        hts, sync = med[(n, "hts")]["steady_sps"], med[(n, "sync")]["steady_sps"]
        paper = PAPER_SPS.get(n, ("-", "-"))
        print(f"{n:>5}{hts:>13.0f}{sync:>14.0f}{hts / sync:>9.2f}x{paper[0]:>11}{paper[1]:>11}")
    _plot(med, args)


def _plot(med: dict, args: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mode, color in (("hts", "tab:blue"), ("sync", "tab:gray")):
        ax.plot(args.num_envs, [med[(n, mode)]["steady_sps"] for n in args.num_envs], "o-", color=color,
                label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xticks(args.num_envs, [str(n) for n in args.num_envs])
    ax.set_xlabel("number of envs")
    ax.set_ylabel("steady env steps/s")
    ax.set_title(f"{args.scenario}, PPO (football-ppo)", fontsize=10)
    ax.legend()
    save(fig, args.plot)


if __name__ == "__main__":
    main()
