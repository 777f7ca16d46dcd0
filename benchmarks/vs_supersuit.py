"""Multi-agent throughput, side by side: htsrl-aio hts and sync against Stable-Baselines3 PPO on the same
PettingZoo env vectorised with SuperSuit (the usual way SB3 users train PettingZoo envs), same settings.

    python benchmarks/vs_supersuit.py --env mpe2.simple_spread_v3:parallel_env --num-envs 8 \
        --rollout 128 --total-steps 100000 --repeats 3

SB3 sees a SuperSuit vector env of num_envs x agents single-agent envs (`pettingzoo_env_to_vec_env_v1`,
then `concat_vec_envs_v1` over `--workers` processes), so its timesteps are agent transitions: the
table converts them to env steps (one ParallelEnv step = agents transitions), the unit htsrl-aio's
steps/s count. Both sides: PPO, rollout x num_envs x agents transitions per update, 4 epochs of 4
minibatches, a 64x64 tanh MLP for actor and critic, the same learning rate. htsrl-aio's steps/s are
the steady rate (the first tenth of the updates skipped: process start-up); SB3's are timed around
`learn()` (its vector env and model are built before the clock starts). Each run also reports the CPU
time it cost per env step, of its main process and of its child processes (htsrl-aio's env workers and
learner, SuperSuit's env processes): where the 2 cores went. Variants alternate
(hts, sync, sb3, hts, ...) so load drifts hit all equally; the table shows medians. Each run is a fresh
spawned process: SuperSuit forks its env processes, which hang when forked from a process that has
already trained (torch's thread pools).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

from htsrl_aio import TrainConfig, train

EPOCHS, MINIBATCHES, LR = 4, 4, 3e-4


def parallel_env(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)()


class CpuClock:
    """CPU seconds (user + system) of this process and of its children that have exited and been
    waited for (env workers, the learner process, SuperSuit's env processes), from `start` on."""

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime

    def per_step(self, env_steps: int) -> tuple[float, float]:
        """(main process, child processes) core-µs per env step so far."""
        now = self._now()
        return tuple((b - a) / env_steps * 1e6 for a, b in zip(self._start, now))  # type: ignore[return-value]


def run_htsrl(args: argparse.Namespace, mode: str, logdir: Path) -> tuple[float, float, float]:
    """(steady env steps/s, main-process and child-process core-µs per env step over the whole run)."""
    clock = CpuClock()
    cfg = TrainConfig(env=args.env, mode=mode, num_envs=args.num_envs, rollout=args.rollout,
                      total_steps=args.total_steps, workers=args.workers, epochs=EPOCHS,
                      minibatches=MINIBATCHES, lr=LR, hidden=(64, 64), seed=args.seed, logdir=str(logdir),
                      progress=False)
    summary = train(cfg)
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 10:]
    sps = (steady[-1]["global_step"] - steady[0]["global_step"]) / \
        (steady[-1]["wall_time_s"] - steady[0]["wall_time_s"])
    return (sps, *clock.per_step(summary["global_step"]))


def run_sb3(args: argparse.Namespace, agents: int) -> tuple[float, float, float]:
    """(env steps/s of `learn()`, main-process and child-process core-µs per env step: the vector env
    and the model are built before the clocks start; the env processes count once `close()` reaps
    them)."""
    import supersuit as ss
    import torch
    from stable_baselines3 import PPO

    env = ss.pettingzoo_env_to_vec_env_v1(parallel_env(args.env))
    env = ss.concat_vec_envs_v1(env, args.num_envs, num_cpus=args.workers or 1,
                                base_class="stable_baselines3")
    batch = args.rollout * args.num_envs * agents
    model = PPO("MlpPolicy", env, n_steps=args.rollout, batch_size=batch // MINIBATCHES, n_epochs=EPOCHS,
                learning_rate=LR, verbose=0,  # no seed=: SuperSuit's vector env has no seed()
                policy_kwargs={"net_arch": [64, 64], "activation_fn": torch.nn.Tanh})
    clock = CpuClock()
    start = time.perf_counter()
    model.learn(total_timesteps=args.total_steps * agents)
    wall = time.perf_counter() - start
    env.close()
    env_steps = model.num_timesteps // agents
    return (env_steps / wall, *clock.per_step(env_steps))


def in_fresh_process(function, *args):
    """`function(*args)` in a new spawned process, its result returned."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="mpe2.simple_spread_v3:parallel_env")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rollout", type=int, default=128)
    parser.add_argument("--total-steps", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--workers", type=int, default=2, help="htsrl-aio workers and SuperSuit's num_cpus")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    agents = len(parallel_env(args.env).possible_agents)
    results: dict[str, list[float]] = {"hts": [], "sync": [], "sb3": []}
    cpu: dict[str, list[tuple[float, float]]] = {variant: [] for variant in results}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in results:
                run = (run_sb3, args, agents) if variant == "sb3" else \
                    (run_htsrl, args, variant, Path(tmp) / f"{variant}{repeat}")
                sps, main_us, children_us = in_fresh_process(*run)
                results[variant].append(sps)
                cpu[variant].append((main_us, children_us))
                print(f"repeat {repeat} {variant}: {sps:.0f} env steps/s; core-µs per env step: main "
                      f"process {main_us:.0f}, child processes {children_us:.0f}", flush=True)
    med = {variant: statistics.median(values) for variant, values in results.items()}
    print(f"\n{args.env} ({agents} agents), PPO, {args.num_envs} envs x {args.rollout} steps, "
          f"{args.total_steps} env steps per run, {args.repeats} alternating repeats (median env steps/s)")
    print("| variant | env steps/s | agent transitions/s | runs |")
    print("| --- | ---: | ---: | --- |")
    for variant, values in results.items():
        print(f"| {variant} | {med[variant]:.0f} | {med[variant] * agents:.0f} | "
              f"{', '.join(f'{v:.0f}' for v in values)} |")
    print(f"hts/sb3: {med['hts'] / med['sb3']:.2f}x, sync/sb3: {med['sync'] / med['sb3']:.2f}x, "
          f"hts/sync: {med['hts'] / med['sync']:.2f}x")
    print("\nCPU per env step (core-µs, medians; htsrl-aio's whole run with its start-up, SB3's learn()):")
    print("| variant | main process | child processes | all |")
    print("| --- | ---: | ---: | ---: |")
    for variant, values in cpu.items():
        main_us, children_us = (statistics.median(column) for column in zip(*values))
        print(f"| {variant} | {main_us:.0f} | {children_us:.0f} | {main_us + children_us:.0f} |")


if __name__ == "__main__":
    main()
