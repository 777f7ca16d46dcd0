"""Stable-Baselines3 itself (and sb3-contrib's RecurrentPPO), with the SB3 zoo's tuned hyperparameters, at
the suite's budget and seeds: the like-for-like check of a published SB3 zoo number (which is one trained
agent, evaluated greedily).

Each seed trains SB3 and reports what the suite reports for its own cells: the mean return of the last
100 training episodes, and the final policy's greedy return over 20 episodes.

    python benchmarks/sb3_reference.py --env LunarLander-v3 --algo a2c --seeds 1 2 3 4 5 \\
        --total-steps 200000 --out benchmarks/results/sb3-lunarlander-a2c.json
    python benchmarks/sb3_reference.py --env htsrl_aio.envs.pomdp:CartPoleNoVel-v1 --algo ppo_lstm \\
        --seeds 1 2 3 4 5 6 7 8 9 10 --total-steps 100000 --out docs/data/sb3-cartpolenovel.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

# rl-baselines3-zoo hyperparams/{a2c,ppo}.yml, the entries the suite's box2d presets started from
# (box2d-ppo has since cut the zoo's 1024-step rollouts to 256: docs/learning.md); "lin_" rates decay
# linearly to 0 over the run. ppo_lstm is sb3-contrib's RecurrentPPO with the settings on the model card
# of the zoo's published CartPoleNoVel-v1 agent (huggingface.co/sb3/ppo_lstm-CartPoleNoVel-v1, the agent
# behind the zoo's 500): an LSTM of 64 for the actor and another for the critic, then one 64-unit ReLU
# layer per head, observations normalised (rewards not).
ZOO: dict[tuple[str, str], dict[str, Any]] = {
    ("LunarLander-v3", "a2c"): {"n_envs": 8, "gamma": 0.995, "n_steps": 5, "lin_learning_rate": 0.00083,
                                "ent_coef": 1e-5},
    ("LunarLander-v3", "ppo"): {"n_envs": 16, "n_steps": 1024, "batch_size": 64, "gae_lambda": 0.98,
                                "gamma": 0.999, "n_epochs": 4, "ent_coef": 0.01},
    ("htsrl_aio.envs.pomdp:CartPoleNoVel-v1", "ppo_lstm"): {
        "n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
        "ent_coef": 0.0, "lin_learning_rate": 0.001, "lin_clip_range": 0.2, "normalize_obs": True,
        "policy_kwargs": {"ortho_init": False, "activation_fn": "relu", "lstm_hidden_size": 64,
                          "enable_critic_lstm": True, "net_arch": {"pi": [64], "vf": [64]}}},
}
EVAL_EPISODES = 20


def linear_schedule(start: float) -> Callable[[float], float]:
    """The zoo's "lin_" schedules: from `start` at the first step to 0 at the last."""
    return lambda remaining: remaining * start


def train_seed(env_id: str, algo: str, seed: int, total_steps: int) -> dict[str, Any]:
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    settings = dict(ZOO[env_id, algo])
    n_envs = settings.pop("n_envs")
    normalize_obs = settings.pop("normalize_obs", False)
    for name in ("learning_rate", "clip_range"):
        if f"lin_{name}" in settings:
            settings[name] = linear_schedule(settings.pop(f"lin_{name}"))
    if "policy_kwargs" in settings:
        settings["policy_kwargs"] = {**settings["policy_kwargs"],
                                     "activation_fn": {"relu": torch.nn.ReLU}[settings["policy_kwargs"]
                                                                              ["activation_fn"]]}
    returns: deque[float] = deque(maxlen=100)

    class Returns(BaseCallback):
        def _on_step(self) -> bool:
            returns.extend(float(i["episode"]["r"]) for i in self.locals["infos"] if "episode" in i)
            return True

    start = time.perf_counter()
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    eval_env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    if normalize_obs:  # the training statistics, frozen, normalise the evaluation's observations
        env = VecNormalize(env, norm_obs=True, norm_reward=False, gamma=settings["gamma"])
        eval_env = VecNormalize(eval_env, norm_obs=True, norm_reward=False, training=False)
    algorithm, policy = {"a2c": (A2C, "MlpPolicy"), "ppo": (PPO, "MlpPolicy"),
                         "ppo_lstm": (RecurrentPPO, "MlpLstmPolicy")}[algo]
    model = algorithm(policy, env, seed=seed, device="cpu", **settings)
    model.learn(total_steps, callback=Returns())
    if normalize_obs:
        eval_env.obs_rms = env.obs_rms
    greedy, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    return {"seed": seed, "final_return": statistics.fmean(returns), "eval_return": float(greedy),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="LunarLander-v3", choices=sorted({env for env, _ in ZOO}))
    parser.add_argument("--algo", default="a2c", choices=sorted({algo for _, algo in ZOO}))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--total-steps", type=int, default=200_000)
    parser.add_argument("--out", type=Path, required=True, help="JSON results file (seeds are added to it)")
    args = parser.parse_args()
    done = json.loads(args.out.read_text()) if args.out.exists() else []
    for seed in args.seeds:
        if any(r["seed"] == seed for r in done):
            continue
        done.append(train_seed(args.env, args.algo, seed, args.total_steps))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(done, indent=1))
        print(f"SB3 {args.algo} {args.env} seed {seed}: training {done[-1]['final_return']:.1f}, "
              f"greedy {done[-1]['eval_return']:.1f} in {done[-1]['seconds']:.0f}s", flush=True)
    finals = [r["final_return"] for r in done]
    greedy = [r["eval_return"] for r in done]
    print(f"{len(done)} seeds: training mean {statistics.fmean(finals):.1f} (min {min(finals):.1f}, max "
          f"{max(finals):.1f}), greedy mean {statistics.fmean(greedy):.1f}")


if __name__ == "__main__":
    main()
