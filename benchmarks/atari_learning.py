"""Learning check: PPO on Pong, htsrl-aio hts and sync (and optionally Stable-Baselines3), same settings.

Variants: `hts` and `sync` use the atari-ppo preset as shipped (bf16 CNN trunk); `hts-fp32` is hts with
`--precision fp32`, to show whether bf16 keeps the learning curve; `sb3` is Stable-Baselines3 PPO.

Each variant trains in its own sub-directory of --outdir (htsrl-aio's run directory, or for SB3 a
metrics.jsonl of its own in the same format: global_step, wall_time_s, episode_return_mean over the
last 100 whole games). Run variants in separate invocations if they do not fit one sitting; the
plot and the table always cover every variant found in --outdir:

    python benchmarks/atari_learning.py --variants hts --total-steps 500000
    python benchmarks/atari_learning.py --variants sync sb3 --total-steps 500000
    python benchmarks/atari_learning.py --variants        # only the table and the plot

The plot shows the mean return against env steps (x4 = frames) and against wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atari_sb3 import sb3_train
from plotting import pyplot, save

from htsrl_aio import TrainConfig, Trainer
from htsrl_aio.training import run_event_loop

VARIANTS = {"hts": "htsrl-aio hts", "sync": "htsrl-aio sync", "hts-fp32": "htsrl-aio hts, fp32",
            "sb3": "SB3 PPO"}


async def run_htsrl(variant: str, args: argparse.Namespace, logdir: Path) -> None:
    mode, _, precision = variant.partition("-")
    cfg = TrainConfig(env=args.env, preset="atari-ppo", mode=mode, total_steps=args.total_steps,
                      seed=args.seed, workers=args.workers, device=args.device, logdir=str(logdir),
                      progress=args.progress, checkpoint_every=0, precision=precision or None)
    async with Trainer(cfg) as trainer:
        async for metrics in trainer.updates():
            if args.stop_at is not None and metrics["global_step"] >= args.stop_at:
                break  # leaving the context stops the run cleanly


def read(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["hts", "sync"], choices=list(VARIANTS))
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--total-steps", type=int, default=500_000, help="env steps (x4 = frames)")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop after this many env steps, the learning-rate schedule still spanning "
                             "--total-steps: a like-for-like slice of a longer run")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--outdir", type=Path, default=Path("runs/atari_learning"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/atari_learning.png"))
    parser.add_argument("--machine", default="2 cores", help="what ran it, for the plot's title")
    args = parser.parse_args()

    for variant in args.variants:
        logdir = args.outdir / variant
        if variant == "sb3":
            sb3_train("ppo", args.env, args.total_steps, logdir, args.seed, args.device, args.stop_at)
        else:
            run_event_loop(run_htsrl(variant, args, logdir))

    found = {v: read(args.outdir / v) for v in VARIANTS
             if (args.outdir / v / "metrics.jsonl").exists()}
    print(f"{args.env} PPO (atari-ppo settings), mean return of the last 100 games")
    print(f"{'variant':<10}{'env steps':>11}{'frames':>11}{'wall s':>9}{'steps/s':>9}{'final return':>14}"
          f"{'best return':>13}")
    for variant, rows in found.items():
        last = rows[-1]
        returns = [r["episode_return_mean"] for r in rows if r["episode_return_mean"] is not None]
        final = f"{returns[-1]:.1f}" if returns else "n/a"
        best = f"{max(returns):.1f}" if returns else "n/a"
        steps, wall = last["global_step"], last["wall_time_s"]
        print(f"{variant:<10}{steps:>11}{4 * steps:>11}{wall:>9.0f}{steps / wall:>9.0f}{final:>14}{best:>13}")
    _plot(found, args)


def _plot(found: dict[str, list[dict]], args: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None or not found:
        return
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for variant, rows in found.items():
        points = [(r["global_step"], r["wall_time_s"], r["episode_return_mean"]) for r in rows
                  if r["episode_return_mean"] is not None]
        if not points:
            continue
        steps, seconds, returns = zip(*points)
        by_step.plot(steps, returns, label=VARIANTS[variant])
        by_time.plot(seconds, returns, label=VARIANTS[variant])
    by_step.set_xlabel("env steps (x4 = frames)")
    by_time.set_xlabel("wall-clock seconds")
    by_step.set_ylabel("mean return, last 100 games")
    by_step.legend()
    fig.suptitle(f"{args.env} PPO, atari-ppo settings, {args.machine}", fontsize=10)
    save(fig, args.plot)


if __name__ == "__main__":
    main()
