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
`learn()` (its vector env and model are built before the clock starts). Variants alternate
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
import statistics
import tempfile
import time
from pathlib import Path

from htsrl_aio import TrainConfig, train

EPOCHS, MINIBATCHES, LR = 4, 4, 3e-4


def parallel_env(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)()


def run_htsrl(args: argparse.Namespace, mode: str, logdir: Path) -> float:
    cfg = TrainConfig(env=args.env, mode=mode, num_envs=args.num_envs, rollout=args.rollout,
                      total_steps=args.total_steps, workers=args.workers, epochs=EPOCHS,
                      minibatches=MINIBATCHES, lr=LR, hidden=(64, 64), seed=args.seed, logdir=str(logdir),
                      progress=False)
    train(cfg)
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 10:]
    return (steady[-1]["global_step"] - steady[0]["global_step"]) / \
        (steady[-1]["wall_time_s"] - steady[0]["wall_time_s"])


def run_sb3(args: argparse.Namespace, agents: int) -> float:
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
    start = time.perf_counter()
    model.learn(total_timesteps=args.total_steps * agents)
    wall = time.perf_counter() - start
    env.close()
    return model.num_timesteps / agents / wall


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
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in results:
                run = (run_sb3, args, agents) if variant == "sb3" else \
                    (run_htsrl, args, variant, Path(tmp) / f"{variant}{repeat}")
                sps = in_fresh_process(*run)
                results[variant].append(sps)
                print(f"repeat {repeat} {variant}: {sps:.0f} env steps/s", flush=True)
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


if __name__ == "__main__":
    main()
