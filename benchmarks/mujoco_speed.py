"""MuJoCo PPO throughput, side by side: htsrl-aio hts vs sync vs Stable-Baselines3 PPO, same settings.

The `mujoco-ppo` preset (8 envs x 256 steps, 10 epochs of 32 minibatches of 64, Adam 3e-4 decayed,
clip 0.2, running normalisation of observations and rewards, 64x64 tanh MLPs) against SB3's PPO
("MlpPolicy", the same numbers, `VecNormalize`, its default `DummyVecEnv`), alternating, `--repeats`
times. "sps" counts from process start to the end; "steady" skips the first 10% of rollouts.

    python benchmarks/mujoco_speed.py --env HalfCheetah-v5 --total-steps 65536 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from atari_throughput import read_rows, steady

from htsrl_aio import TrainConfig, train


def run_htsrl(args: argparse.Namespace, mode: str, logdir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    summary = train(TrainConfig(env=args.env, preset="mujoco-ppo", mode=mode, total_steps=args.total_steps,
                                workers=args.workers, logdir=str(logdir), progress=False, checkpoint_every=0,
                                tensorboard=False))
    wall = time.perf_counter() - start
    return {"sps": summary["global_step"] / wall, **steady(read_rows(logdir)),
            "return": summary["episode_return_mean"]}


def run_sb3(args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    start = time.perf_counter()
    logdir.mkdir(parents=True)
    returns: deque[float] = deque(maxlen=100)

    class Log(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.file = open(logdir / "metrics.jsonl", "w", buffering=1)  # noqa: SIM115

        def _on_step(self) -> bool:
            returns.extend(float(info["episode"]["r"]) for info in self.locals["infos"] if "episode" in info)
            return True

        def _on_rollout_end(self) -> None:
            self.file.write(json.dumps({"global_step": self.num_timesteps,
                                        "wall_time_s": time.perf_counter() - start}) + "\n")

    env = VecNormalize(make_vec_env(lambda: gym.make(args.env), n_envs=8, seed=1), gamma=0.99)
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=10, learning_rate=lambda f: 3e-4 * f,
                gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
                policy_kwargs={"net_arch": [64, 64]}, seed=1, device="cpu")
    model.learn(args.total_steps, callback=Log())
    env.close()
    rows = read_rows(logdir)
    return {"sps": rows[-1]["global_step"] / (time.perf_counter() - start), **steady(rows),
            "return": statistics.mean(returns) if returns else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--total-steps", type=int, default=65_536)
    parser.add_argument("--workers", type=int, default=None, help="env worker processes (default: cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-sb3", action="store_true")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in ("hts", "sync", *(() if args.no_sb3 else ("sb3",))):
                logdir = Path(tmp) / f"{variant}{repeat}"
                result = run_sb3(args, logdir) if variant == "sb3" else run_htsrl(args, variant, logdir)
                results.setdefault(variant, []).append(result)
                shown = {k: round(v, 1) for k, v in result.items() if v is not None}
                print(f"  {variant}: {json.dumps(shown)}", flush=True)
    print(f"{args.env}, mujoco-ppo settings, {args.total_steps} steps, median of {args.repeats}")
    print(f"{'variant':<8}{'sps':>8}{'steady':>8}{'vs sync':>9}{'vs sb3':>8}")
    median = {v: {k: statistics.median(r[k] for r in rs) for k in ("sps", "steady_sps")}
              for v, rs in results.items()}
    for variant, m in median.items():
        vs_sync = m["steady_sps"] / median["sync"]["steady_sps"]
        vs_sb3 = m["steady_sps"] / median["sb3"]["steady_sps"] if "sb3" in median else float("nan")
        print(f"{variant:<8}{m['sps']:>8.0f}{m['steady_sps']:>8.0f}{vs_sync:>9.2f}{vs_sb3:>8.2f}")


if __name__ == "__main__":
    main()
