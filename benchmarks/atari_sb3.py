"""Stable-Baselines3 PPO and A2C on Atari with the settings of htsrl-aio's atari-ppo / atari-a2c presets,
and sb3-contrib's RecurrentPPO ("ppo_lstm") with those of `--preset atari-lstm` (one frame, a 128-unit LSTM).

Used by atari_throughput.py and atari_learning.py. SB3 comes from the `bench` extra, never from core.
Writes `metrics.jsonl` rows like htsrl-aio's (global_step, wall_time_s, episode_return_mean over the
last 100 whole games in game points, from the Monitor that make_atari_env puts under AtariWrapper),
one per rollout, so the same code reads both.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path


def sb3_train(algo: str, env_id: str, total_steps: int, logdir: Path, seed: int = 1,
              device: str = "cpu", stop_at: int | None = None) -> None:
    """Train for `total_steps` (the learning-rate schedule's length), stopping early at `stop_at`."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    logdir.mkdir(parents=True, exist_ok=False)
    start = time.perf_counter()

    class Log(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=100)
            self.file = open(logdir / "metrics.jsonl", "w", buffering=1)  # noqa: SIM115

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
            return stop_at is None or self.num_timesteps < stop_at

        def _on_rollout_end(self) -> None:
            mean = sum(self.returns) / len(self.returns) if self.returns else None
            self.file.write(json.dumps({"global_step": self.num_timesteps, "episode_return_mean": mean,
                                        "wall_time_s": time.perf_counter() - start}) + "\n")

    n_envs = 16 if algo == "a2c" else 8
    # v5 ids skip 4 frames themselves; AtariWrapper skips 4 again unless the env's own skip is 1.
    # Sticky actions stay at the id's 0.25, as in htsrl-aio.
    env = make_atari_env(env_id, n_envs=n_envs, seed=seed, env_kwargs={"frameskip": 1})
    if algo != "ppo_lstm":  # the recurrent policy sees one frame, as CleanRL's ppo_atari_lstm.py
        env = VecFrameStack(env, 4)
    common = {"ent_coef": 0.01, "vf_coef": 0.5, "gamma": 0.99, "max_grad_norm": 0.5, "seed": seed,
              "device": device}
    if algo == "ppo_lstm":
        from sb3_contrib import RecurrentPPO

        # One LSTM of 128 units shared by actor and critic, as htsrl-aio's --memory lstm --memory-size 128.
        model = RecurrentPPO("CnnLstmPolicy", env, n_steps=128, batch_size=256, n_epochs=4, gae_lambda=0.95,
                             learning_rate=lambda frac: 2.5e-4 * frac, clip_range=0.1,
                             policy_kwargs={"lstm_hidden_size": 128, "shared_lstm": True,
                                            "enable_critic_lstm": False}, **common)
    elif algo == "ppo":
        model = PPO("CnnPolicy", env, n_steps=128, batch_size=256, n_epochs=4, gae_lambda=0.95,
                    learning_rate=lambda frac: 2.5e-4 * frac, clip_range=0.1, **common)
    else:  # SB3's A2C defaults are the reference ones: RMSprop 7e-4 (alpha 0.99, eps 1e-5), 5 steps
        model = A2C("CnnPolicy", env, n_steps=5, learning_rate=7e-4, **common)
    model.learn(total_steps, callback=Log())
    env.close()
