"""What Ray actors cost against worker processes, and how many env steps one head node can dispatch.

1. Side by side (alternating runs, medians): hts steps/s with `--env-backend process` (`--workers W`)
   and `--env-backend ray` (`--ray-actors W`), the same envs and settings otherwise, for CartPole-v1
   as it is and with an exponential sleep of mean `--delay-ms` added to every step (throughput.py's
   `ExponentialStepDelay`, the step-time model of latency.py and the paper's Claim 1).
2. The round trip of one actor message carrying k env steps (CartPole-v1, k in `--k`): wall time and
   the head node's CPU time per message, through the backend's own `ReplicaHost`, awaited from
   asyncio as the backend does.
3. The head node's own ceiling: steps/s of the schedule, inference and learner with envs that cost
   nothing (in-loop envs that answer at once), so that with (2) one can say how many env nodes one
   head node keeps busy at a given step time.

    python benchmarks/ray_overhead.py                      # about 3 minutes on 2 cores

Ray runs join one local instance started here (`--ray-cpus`), so its start-up is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
from throughput import run_once

from htsrl_aio import TrainConfig, train
from htsrl_aio.backends.ray_actors import ReplicaHost
from htsrl_aio.backends.worker import Command
from htsrl_aio.envs import probe_env, resolve_env
from htsrl_aio.training import run_event_loop


class InstantEnv:
    """An AsyncEnv that answers at once: what is left of a step is the head node's own work."""

    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.obs = np.zeros(4, np.float32)

    async def reset(self, *, seed=None, options=None):
        return self.obs, {}

    async def step(self, action):
        return self.obs, 0.0, False, False, {}


def side_by_side(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rows = []
    for delay_ms in args.delay_ms:
        settings = argparse.Namespace(
            env="CartPole-v1", step_delay_ms=delay_ms, algo="ppo", mode="hts", num_envs=args.num_envs,
            rollout=args.rollout, total_steps=args.delay_total_steps if delay_ms else args.total_steps,
            workers=args.workers, device="cpu", learner="process", seed=1)
        runs: dict[str, list[dict]] = {"process": [], "ray": []}
        for repeat in range(args.repeats):
            for backend, overrides in (("process", {"env_backend": "process"}),
                                       ("ray", {"env_backend": "ray", "ray_actors": args.workers})):
                runs[backend].append(run_once(settings, overrides, tmp / f"{delay_ms}-{backend}-{repeat}"))
        steady = {backend: statistics.median(r["steady_sps"] for r in results)
                  for backend, results in runs.items()}
        rows.append({"delay_ms": delay_ms, **steady, "ratio": steady["ray"] / steady["process"]})
    return rows


async def message_cost(k: int, calls: int) -> tuple[float, float]:
    """(wall ms, head CPU ms) per message of k CartPole steps to one actor."""
    factory = resolve_env("CartPole-v1", TrainConfig())
    factory, spec = await probe_env(factory)
    host = ray.remote(ReplicaHost).options(num_cpus=0)
    actor = host.remote(factory, spec, tuple(range(k)), 1, 64, False, ())
    await asyncio.wrap_future(actor.start.remote().future())
    await asyncio.wrap_future(actor.run.remote([(Command("reset", e), None) for e in range(k)]).future())
    batches = [[(Command("step", e, 0, t % 64, (t + e) % 2), None) for e in range(k)] for t in range(calls)]
    for batch in batches[:20]:  # warm up
        await asyncio.wrap_future(actor.run.remote(batch).future())
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        await asyncio.wrap_future(actor.run.remote(batch).future())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ray.kill(actor)
    return 1000 * wall / calls, 1000 * cpu / calls


def head_ceiling(args: argparse.Namespace, tmp: Path) -> float:
    """Steady steps/s of the head node alone: in-loop envs that cost nothing, the benchmark's PPO."""
    cfg = TrainConfig(env=InstantEnv, algo="ppo", num_envs=args.num_envs, rollout=args.rollout,
                      total_steps=args.total_steps, logdir=str(tmp / "ceiling"), progress=False)
    train(cfg)
    rows = [json.loads(line) for line in (tmp / "ceiling" / "metrics.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 10:]
    return (steady[-1]["global_step"] - steady[0]["global_step"]) / (steady[-1]["wall_time_s"]
                                                                      - steady[0]["wall_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--rollout", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, and as many Ray actors")
    parser.add_argument("--total-steps", type=int, default=40_960, help="per CartPole run")
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 1.0],
                        help="mean step delays to add (0: CartPole-v1 as it is)")
    parser.add_argument("--delay-total-steps", type=int, default=16_384, help="per latency-env run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--calls", type=int, default=300, help="messages timed per k")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    args = parser.parse_args()

    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = side_by_side(args, Path(tmp))
            ceiling = head_ceiling(args, Path(tmp))
        costs = {k: run_event_loop(message_cost(k, args.calls)) for k in args.k}
    finally:
        ray.shutdown()

    print(f"\nhts PPO, {args.num_envs} envs, rollout {args.rollout}, {args.workers} worker processes vs "
          f"{args.workers} Ray actors, {args.repeats} alternating repeats (median steady steps/s)")
    print(f"{'env':<28}{'process':>10}{'ray':>10}{'ray/process':>13}")
    for row in rows:
        env = "CartPole-v1" if not row["delay_ms"] else f"CartPole-v1 + exp({row['delay_ms']:g} ms)"
        print(f"{env:<28}{row['process']:>10.0f}{row['ray']:>10.0f}{row['ratio']:>13.2f}")
    print(f"\nhead node alone (in-loop envs that cost nothing): {ceiling:.0f} steps/s")
    print(f"\none actor message of k CartPole steps\n{'k':>5}{'wall ms':>10}{'head CPU ms':>13}"
          f"{'head CPU us/step':>18}{'steps/s per head core':>23}")
    for k, (wall, cpu) in costs.items():
        print(f"{k:>5}{wall:>10.3f}{cpu:>13.3f}{1000 * cpu / k:>18.1f}{k / cpu * 1000:>23.0f}")


if __name__ == "__main__":
    main()
