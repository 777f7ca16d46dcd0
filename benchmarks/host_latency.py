"""How much training delays the host application's own coroutines (the embedding promise).

A host coroutine sleeps 5 ms at a time while a Trainer runs in the same event loop; the table gives
the extra delay it sees beyond those 5 ms (median, p99, max), for the learner in a process and in a
thread. Target: p99 < 20 ms.

    python benchmarks/host_latency.py --total-steps 100000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from htsrl_aio import TrainConfig, Trainer
from htsrl_aio.training import run_event_loop


async def measure(args: argparse.Namespace, learner: str, logdir: Path) -> tuple[list[float], float]:
    delays: list[float] = []

    async def heartbeat() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            delays.append(time.perf_counter() - start - 0.005)

    config = TrainConfig(env=args.env, num_envs=args.num_envs, total_steps=args.total_steps, learner=learner,
                         logdir=str(logdir), progress=False)
    async with Trainer(config) as trainer:
        beat = asyncio.ensure_future(heartbeat())
        try:
            summary = await trainer.run()
        finally:
            beat.cancel()
    return delays, summary["sps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--total-steps", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{args.env}, {args.num_envs} envs, {args.total_steps} steps: host coroutine sleeping 5 ms")
    print(f"{'learner':<9}{'beats':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'steps/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for learner in ("process", "thread"):
            delays, sps = run_event_loop(measure(args, learner, Path(tmp) / learner))
            p50, p99, worst = (1000 * float(np.percentile(delays, q)) for q in (50, 99, 100))
            print(f"{learner:<9}{len(delays):>7}{p50:>9.1f}{p99:>9.1f}{worst:>9.1f}{sps:>9.0f}")


if __name__ == "__main__":
    main()
