"""Atari throughput, side by side: htsrl-aio hts vs sync vs Stable-Baselines3, collection vs raw ALE,
and scaling with the number of envs. Prints one table and writes a PNG.

Parts (`--parts`, all by default):

- bound:   the machine's bound from three per-step costs measured here, in core-milliseconds per env
           step: the emulator (AtariVectorEnv on one thread), inference (the CNN's forward pass over
           one `--inference-block` of rows, per row) and the learner (its busy time per env step in
           the sync PPO runs of part `ppo`). Collection is bounded by cores / (emulator + inference),
           training by cores / (all three).
- raw:     ale-py's AtariVectorEnv stepping `--num-envs` envs with random actions on all cores (its
           own C++ thread pool): the ceiling for env stepping, no inference at all.
- collect: htsrl-aio collecting with batched inference and no learning (the learner is replaced by
           one that returns at once), same envs: the runtime's overhead against `raw` and the bound.
- engine:  collection only for each --engine-batch in `--engine-batches` and each --engine-threads in
           `--engine-threads`: what the engine backend's defaults should be.
- ppo:     atari-ppo preset, hts vs sync vs SB3 PPO (CnnPolicy, same hyperparameters), alternating;
           once per `--torch-compile` setting (htsrl-aio's flag; each setting's bound counts the
           learner cost of its own sync run). Parts a2c and lstm run each setting too.
- a2c:     atari-a2c preset, hts vs sync vs SB3 A2C, alternating.
- lstm:    recurrent PPO (atari-lstm preset: atari-ppo's, --memory lstm, one frame), hts vs sync vs
           sb3-contrib's RecurrentPPO (CnnLstmPolicy, same settings, one shared 128-unit LSTM), and hts
           with the feedforward policy on 4 stacked frames: the cost of the core.
- scaling: hts PPO (atari-ppo) steps/s for each of `--scaling-envs`.

"steady" skips the first 10% of updates (process start, first updates). Busy fractions are means over
the steady updates of metrics.jsonl. Parameterised (--num-envs, --workers, --device, --torch-threads,
step counts) so the same script runs on a many-core or GPU machine:

    python benchmarks/atari_throughput.py --parts ppo --total-steps 20000 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from atari_sb3 import sb3_train
from plotting import pyplot, save

import htsrl_aio.assembly
from htsrl_aio import TrainConfig, train
from htsrl_aio.config import available_cores
from htsrl_aio.runtime.learner import ThreadLearner
from htsrl_aio.runtime.storage import RolloutStorage


class CollectOnlyLearner(ThreadLearner):
    """Learns nothing and returns at once, so a run measures collection and inference alone."""

    async def update(self, storage: RolloutStorage, behaviour_version: int) -> dict[str, float]:
        self.learner.version += 1
        return {}


def steady(rows: list[dict]) -> dict[str, Any]:
    rows = rows[len(rows) // 10:]
    out: dict[str, Any] = {}
    if len(rows) >= 2:
        out["steady_sps"] = ((rows[-1]["global_step"] - rows[0]["global_step"])
                             / (rows[-1]["wall_time_s"] - rows[0]["wall_time_s"]))
    for key in ("learner_busy_frac", "collector_busy_frac"):
        if key in rows[0]:
            out[key] = statistics.mean(r[key] for r in rows)
    return out


def read_rows(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def run_htsrl(args: argparse.Namespace, logdir: Path, **settings: Any) -> dict[str, Any]:
    settings = {"env": args.env, "env_backend": args.env_backend, "workers": args.workers,
                "device": args.device, "torch_threads": args.torch_threads,
                "inference_block": args.inference_block, "seed": 1, **settings}
    start = time.perf_counter()
    summary = train(TrainConfig(**settings, logdir=str(logdir), progress=False, checkpoint_every=0))
    wall = time.perf_counter() - start  # process start to the end, as SB3's is measured
    return {"sps": summary["global_step"] / wall, **steady(read_rows(logdir))}


def run_sb3(args: argparse.Namespace, algo: str, steps: int, logdir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    sb3_train(algo, args.env, steps, logdir, device=args.device)
    rows = read_rows(logdir)
    return {"sps": rows[-1]["global_step"] / (time.perf_counter() - start), **steady(rows)}


def run_collect(args: argparse.Namespace, logdir: Path, deterministic: bool = True,
                **settings: Any) -> dict[str, Any]:
    # assembly builds the thread learner by this name (assembly._make_learner)
    original = htsrl_aio.assembly.ThreadLearner
    htsrl_aio.assembly.ThreadLearner = CollectOnlyLearner
    try:
        settings = {"preset": "atari-ppo", "num_envs": args.num_envs, "learner": "thread",
                    "total_steps": args.collect_steps, "deterministic": deterministic, **settings}
        return run_htsrl(args, logdir, **settings)
    finally:
        htsrl_aio.assembly.ThreadLearner = original


def run_raw(args: argparse.Namespace, threads: int | None = None) -> dict[str, Any]:
    """AtariVectorEnv stepping random actions: steps/s and core-ms per step (threads: all cores)."""
    from ale_py.vector_env import AtariVectorEnv

    threads = threads or available_cores()
    kwargs = gym.spec(args.env).kwargs
    env = AtariVectorEnv(kwargs["game"], num_envs=args.num_envs, num_threads=threads,
                         repeat_action_probability=kwargs.get("repeat_action_probability", 0.25))
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    n = env.single_action_space.n
    rounds = max(args.collect_steps // args.num_envs, 1)
    start = time.perf_counter()
    for _ in range(rounds):
        env.step(rng.integers(n, size=args.num_envs))
    seconds = time.perf_counter() - start
    env.close()
    sps = rounds * args.num_envs / seconds
    return {"sps": sps, "steady_sps": sps, "core_ms": 1000 * threads / sps}


def inference_core_ms(args: argparse.Namespace) -> float:
    """The CNN's forward pass over one inference block, per row, on one thread, as the runtime runs it."""
    import torch

    from htsrl_aio.envs import resolve_env
    from htsrl_aio.envs.check import probe_env
    from htsrl_aio.models import build_model

    cfg = TrainConfig(env=args.env, preset="atari-ppo", device=args.device,
                      inference_block=args.inference_block).resolved()
    _, spec = asyncio.run(probe_env(resolve_env(cfg.env, cfg)))
    model = build_model(spec, cfg).to(args.device)
    obs = {k: torch.zeros((cfg.inference_block, *shape), dtype=getattr(torch, np.dtype(dtype).name),
                          device=args.device) for k, (shape, dtype) in spec.obs.arrays().items()}
    torch.set_num_threads(args.torch_threads)
    with torch.inference_mode():
        for _ in range(5):
            model(obs)
        passes, start = 0, time.perf_counter()
        while time.perf_counter() - start < 3.0:
            model(obs)
            passes += 1
        if args.device != "cpu":
            torch.cuda.synchronize()
    return 1000 * args.torch_threads * (time.perf_counter() - start) / (passes * cfg.inference_block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["bound", "raw", "collect", "engine", "ppo", "a2c", "lstm", "scaling"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument("--env-backend", default="auto", help="htsrl-aio's --env-backend")
    parser.add_argument("--inference-block", type=int, default=8,
                        help="htsrl-aio's --inference-block (larger blocks suit a GPU)")
    parser.add_argument("--engine-batches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--engine-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--num-envs", type=int, default=8, help="envs for raw and collect")
    parser.add_argument("--total-steps", type=int, default=20_480, help="env steps per PPO run")
    parser.add_argument("--a2c-steps", type=int, default=16_000, help="env steps per A2C run")
    parser.add_argument("--collect-steps", type=int, default=10_240, help="env steps for raw and collect")
    parser.add_argument("--scaling-envs", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--scaling-rollouts", type=int, default=4,
                        help="rollouts per scaling run (at least --total-steps steps)")
    parser.add_argument("--scaling-rollout", type=int, default=128,
                        help="steps per env per rollout in the scaling runs (atari-ppo's 128; smaller for a "
                             "smoke test, as scripts/gpu-check.sh --cpu-smoke runs it)")
    parser.add_argument("--no-sb3", action="store_true", help="skip Stable-Baselines3")
    parser.add_argument("--workers", type=int, default=None, help="env worker processes (default: cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--torch-compile", nargs="+", default=["none"], choices=["none", "learner", "all"],
                        help="htsrl-aio's --torch-compile settings for parts ppo and a2c, run side by side")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/atari_throughput.png"))
    args = parser.parse_args()

    results: dict[tuple[str, str], list[dict]] = {}

    def record(part: str, variant: str, result: dict) -> None:
        results.setdefault((part, variant), []).append(result)
        print(f"  {part}/{variant}: {json.dumps({k: round(v, 3) for k, v in result.items()})}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))

        def fresh() -> Path:
            return Path(tmp) / f"run{next(counter)}"

        for _ in range(args.repeats):
            if "bound" in args.parts:
                record("bound", "emulator", {"core_ms": run_raw(args, threads=1)["core_ms"]})
                record("bound", "inference", {"core_ms": inference_core_ms(args)})
            if "raw" in args.parts:
                record("collect", "raw AtariVectorEnv", run_raw(args))
            if "collect" in args.parts:
                record("collect", "htsrl collect", run_collect(args, fresh()))
                record("collect", "htsrl collect fastest", run_collect(args, fresh(), deterministic=False))
            if "engine" in args.parts:
                for batch in args.engine_batches:
                    for threads in args.engine_threads:
                        record("engine", f"B={batch} threads={threads}",
                               run_collect(args, fresh(), env_backend="engine", engine_batch=batch,
                                           engine_threads=threads))
            if "lstm" in args.parts:
                for compiled in args.torch_compile:
                    suffix = "" if compiled == "none" else f", compile {compiled}"
                    settings = {"total_steps": args.total_steps, "torch_compile": compiled}
                    for mode in ("hts", "sync"):
                        record("lstm", f"htsrl {mode}{suffix}",
                               run_htsrl(args, fresh(), preset="atari-lstm", mode=mode, **settings))
                    record("lstm", f"htsrl hts feedforward{suffix}",
                           run_htsrl(args, fresh(), preset="atari-ppo", **settings))
                if not args.no_sb3:
                    record("lstm", "sb3-contrib RecurrentPPO",
                           run_sb3(args, "ppo_lstm", args.total_steps, fresh()))
            for algo, steps in (("ppo", args.total_steps), ("a2c", args.a2c_steps)):
                if algo not in args.parts:
                    continue
                for compiled in args.torch_compile:
                    suffix = "" if compiled == "none" else f", compile {compiled}"
                    for mode in ("hts", "sync"):
                        result = run_htsrl(args, fresh(), preset=f"atari-{algo}", mode=mode,
                                           total_steps=steps, torch_compile=compiled)
                        record(algo, f"htsrl {mode}{suffix}", result)
                        if mode == "sync" and "bound" in args.parts:
                            # The learner's busy seconds per env step, from the run itself.
                            record("bound", f"learner {algo}{suffix}",
                                   {"core_ms": 1000 * result["learner_busy_frac"] / result["steady_sps"]})
                if not args.no_sb3:
                    record(algo, "SB3", run_sb3(args, algo, steps, fresh()))
        if "scaling" in args.parts:
            for n in args.scaling_envs:
                steps = max(args.total_steps, n * args.scaling_rollout * args.scaling_rollouts)
                record("scaling", f"hts {n} envs", run_htsrl(args, fresh(), preset="atari-ppo", num_envs=n,
                                                              rollout=args.scaling_rollout,
                                                              total_steps=steps))

    print_table(results, args)
    plot(results, args)


BASELINES = {"collect": "raw AtariVectorEnv", "engine": "B=8 threads=2", "ppo": "SB3", "a2c": "SB3",
             "lstm": "sb3-contrib RecurrentPPO",
             "scaling": "hts 4 envs"}


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def print_table(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> None:
    print(f"\n{args.env}, {available_cores()} cores, device {args.device}, median of {args.repeats} "
          "alternating repeats (scaling: one run each)")
    print(f"{'part':<8}{'variant':<24}{'steps/s':>9}{'steady':>9}{'learner busy':>14}{'collector busy':>16}"
          f"{'steady vs baseline':>20}")
    for (part, variant), runs in results.items():
        if part == "bound":
            continue
        base_runs = results.get((part, BASELINES[part]))
        base = median(base_runs, "steady_sps") if base_runs else None
        cells = [median(runs, k) for k in ("sps", "steady_sps", "learner_busy_frac", "collector_busy_frac")]
        ratio = f"{cells[1] / base:.2f}x" if base and cells[1] else "-"
        shown = [f"{c:.0f}" if c is not None else "-" for c in cells[:2]]
        shown += [f"{c:.2f}" if c is not None else "-" for c in cells[2:]]
        print(f"{part:<8}{variant:<24}{shown[0]:>9}{shown[1]:>9}{shown[2]:>14}{shown[3]:>16}{ratio:>20}")
    for algo in ("ppo", "a2c"):
        hts, sync = results.get((algo, "htsrl hts")), results.get((algo, "htsrl sync"))
        if hts and sync:
            print(f"{algo}: hts/sync {median(hts, 'steady_sps') / median(sync, 'steady_sps'):.2f}x steady, "
                  f"{median(hts, 'sps') / median(sync, 'sps'):.2f}x end to end")
    print_bound(results)


def print_bound(results: dict[tuple[str, str], list[dict]]) -> None:
    """The machine's bound from the per-step costs, and each measured rate as a fraction of it."""
    costs = {variant: median(runs, "core_ms") for (part, variant), runs in results.items() if part == "bound"}
    if "emulator" not in costs or "inference" not in costs:
        return
    cores = available_cores()
    print("\nper-step costs (core-ms): " + ", ".join(f"{k} {v:.3f}" for k, v in costs.items()))
    collect_bound = 1000 * cores / (costs["emulator"] + costs["inference"])
    rows = [("collect", "htsrl collect", collect_bound)]
    for algo in ("ppo", "a2c"):
        for learner in (k for k in costs if k.split(",")[0] == f"learner {algo}"):
            # Each --torch-compile setting's bound counts its own learner (inference stays eager's).
            bound = 1000 * cores / (costs["emulator"] + costs["inference"] + costs[learner])
            suffix = learner[len(f"learner {algo}"):]
            rows += [(algo, f"htsrl hts{suffix}", bound), (algo, f"htsrl sync{suffix}", bound)]
    for part, variant, bound in rows:
        runs = results.get((part, variant))
        if runs:
            steady = median(runs, "steady_sps")
            print(f"{part}/{variant}: bound {bound:.0f} steps/s on {cores} cores; measured {steady:.0f} "
                  f"= {steady / bound:.2f} of it")


def plot(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None:
        return
    parts = [p for p in ("collect", "engine", "ppo", "a2c", "lstm", "scaling")
             if any(k[0] == p for k in results)]
    if not parts:
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 3.6), squeeze=False)
    for ax, part in zip(axes[0], parts):
        variants = [v for p, v in results if p == part]
        values = [median(results[(part, v)], "steady_sps") or 0.0 for v in variants]
        if part == "scaling":
            envs = [int(v.split()[1]) for v in variants]
            ax.plot(envs, values, marker="o")
            ax.set_xscale("log", base=2)
            ax.set_xticks(envs, [str(n) for n in envs])
            ax.set_xlabel("envs (hts PPO)")
            ax.set_ylim(bottom=0)
        else:
            ax.bar(range(len(variants)), values, color="tab:blue")
            ax.set_xticks(range(len(variants)), [v.replace(" ", "\n", 1) for v in variants], fontsize=7)
        ax.set_title(part, fontsize=10)
        ax.set_ylabel("steady env steps/s")
    fig.suptitle(f"{args.env}, {available_cores()} cores, {args.device}", fontsize=10)
    save(fig, args.plot)


if __name__ == "__main__":
    main()
