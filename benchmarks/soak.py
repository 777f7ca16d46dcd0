"""Soak: a long run in --on-env-error restart mode with a worker killed every few minutes.

Records the resident memory of the training process and all its children over time, the shared-memory
segments it holds, and the restarts. Target: less than 5% memory growth after warm-up, no leaked
shared memory once the run has stopped.

    python benchmarks/soak.py                        # 30 minutes, a worker killed every 3 minutes
    python benchmarks/soak.py --minutes 10 --kill-every-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

from plotting import pyplot, save

from htsrl_aio import RunStopped, TrainConfig, Trainer
from htsrl_aio.envs.shm import SHM_PREFIX
from htsrl_aio.training import run_event_loop

WORKER_NAME = "htsrl-env-worker"


def rss_mib(pid: int) -> float:
    """Resident memory of one process (MiB), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def tree_rss_mib() -> float:
    return rss_mib(os.getpid()) + sum(rss_mib(c.pid) for c in multiprocessing.active_children())


def shm_segments() -> int:
    return sum(1 for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{os.getpid()}_"))


async def soak(args: argparse.Namespace, logdir: Path) -> dict:
    config = TrainConfig(env=args.env, num_envs=args.num_envs, workers=args.workers, total_steps=10**12,
                         on_env_error="restart", logdir=str(logdir), progress=False, tensorboard=False)
    samples: list[tuple[float, float, int, int]] = []  # (minutes, rss MiB, shm segments, restarts)
    kills = 0
    rng = random.Random(0)
    async with Trainer(config) as trainer:
        task = asyncio.ensure_future(trainer.run())
        start = time.monotonic()
        next_kill = start + args.kill_every_s
        restarts = 0
        while (elapsed := time.monotonic() - start) < args.minutes * 60 and not task.done():
            await asyncio.sleep(args.sample_every_s)
            if time.monotonic() >= next_kill:
                workers = [c for c in multiprocessing.active_children() if c.name.startswith(WORKER_NAME)]
                if workers:
                    os.kill(rng.choice(workers).pid, signal.SIGKILL)
                    kills += 1
                next_kill += args.kill_every_s
            restarts = trainer.pool.restarts
            samples.append((elapsed / 60, tree_rss_mib(), shm_segments(), restarts))
            print(f"{elapsed / 60:6.1f} min  rss {samples[-1][1]:8.1f} MiB  shm {samples[-1][2]:3d}  "
                  f"restarts {restarts:3d}  kills {kills}", flush=True)
        # The stop a signal makes: at the next swap, with a checkpoint that resumes exactly.
        if not trainer.stop_at_next_swap():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RunStopped):
            await task
    print(f"stop: {trainer.stop_note}")
    return {"samples": samples, "kills": kills, "restarts": restarts, "shm_after": shm_segments(),
            "workers_after": len(multiprocessing.active_children())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every-s", type=float, default=180.0)
    parser.add_argument("--sample-every-s", type=float, default=10.0)
    parser.add_argument("--warmup-frac", type=float, default=0.2, help="share of the run that is warm-up")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("docs/img/soak.png"))
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="htsrl-soak-")) / "run"
    try:
        result = run_event_loop(soak(args, logdir))
    finally:
        shutil.rmtree(logdir.parent, ignore_errors=True)
    samples = result["samples"]
    warm = [s[1] for s in samples if s[0] >= args.warmup_frac * args.minutes]
    # Medians of the first and last tenth: a sample taken while a killed worker is down is a dip, not
    # a change in what the run holds.
    window = max(1, len(warm) // 10)
    base, end = statistics.median(warm[:window]), statistics.median(warm[-window:])
    peak = max(warm)
    growth = 100 * (end - base) / base
    print("\n| minutes | workers killed | env restarts | RSS after warm-up | RSS at end | peak | growth "
          "| shm segments after stop |\n|---|---|---|---|---|---|---|---|")
    print(f"| {samples[-1][0]:.1f} | {result['kills']} | {result['restarts']} | {base:.0f} MiB "
          f"| {end:.0f} MiB | {peak:.0f} MiB | {growth:+.1f}% | {result['shm_after']} |")
    print(f"target < 5% growth after warm-up: {'met' if growth < 5 else 'NOT met'}; leaked shared memory: "
          f"{'none' if result['shm_after'] == 0 else result['shm_after']}; child processes left: "
          f"{result['workers_after']}")
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([s[0] for s in samples], [s[1] for s in samples], label="RSS, process tree (MiB)")
        for minute in [s[0] for a, s in itertools.pairwise(samples) if s[3] > a[3]]:
            ax.axvline(minute, color="grey", lw=0.5, ls=":")
        ax.axvline(args.warmup_frac * args.minutes, color="k", lw=0.8, label="end of warm-up")
        ax.set_xlabel("minutes (dotted: a worker was killed and restarted)")
        ax.set_ylabel("MiB")
        ax.set_title(f"soak: {args.env}, {args.num_envs} envs, {args.workers} workers, restart mode")
        ax.legend(loc="lower right")
        save(fig, args.plot)


if __name__ == "__main__":
    main()
