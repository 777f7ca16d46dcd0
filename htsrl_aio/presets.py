"""Default hyperparameters as data: the base ones, the algorithm's, and named presets for env families.

:meth:`htsrl_aio.config.TrainConfig.resolved` fills each hyperparameter left at ``None`` from, in order:
the chosen preset (``PRESETS``), the algorithm's defaults (``ALGO_DEFAULTS``), then ``BASE_DEFAULTS``.
Every key here is a TrainConfig field whose default is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Defaults that depend on the algorithm, chosen on the learning suite (docs/learning.md). PPO's learn
# classic control quickly with 8 envs (CartPole-v1 reaches a mean return of 500 within 150k-300k steps);
# A2C's are the usual reference implementation's (5-step returns, RMSprop 7e-4) with no entropy bonus, as
# the SB3 zoo uses on classic control, and the learning rate decayed to 0: with a constant rate and a
# 0.01 bonus A2C reached 475 on CartPole-v1 in 1 hts seed of 10, with these in 10 of 10 (sync: 0 and 7).
# Atari, Box2D and football get presets of their own.
BASE_DEFAULTS: dict[str, Any] = {
    "algo": "ppo", "num_envs": 8, "gamma": 0.99, "clip_coef": 0.2, "vf_coef": 0.5, "max_grad_norm": 0.5,
    "precision": "fp32", "normalize_obs": False, "normalize_reward": False, "memory": "none",
    "memory_size": 128, "ppo_trust_region": "current",
}

ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {
        "rollout": 64, "lr": 1e-3, "optimizer": "adam", "anneal_lr": True, "gae_lambda": 0.95,
        "epochs": 4, "minibatches": 4, "ent_coef": 0.0, "clip_vloss": True,
    },
    "a2c": {
        "rollout": 5, "lr": 7e-4, "optimizer": "rmsprop", "anneal_lr": True, "gae_lambda": 1.0,
        "epochs": 1, "minibatches": 1, "ent_coef": 0.0, "clip_vloss": False,  # A2C has no value clip
    },
}


@dataclass(frozen=True)
class Preset:
    """A named bundle of hyperparameters for an env family: where they come from, and the values."""

    reason: str
    values: dict[str, Any]


PRESETS: dict[str, Preset] = {
    # 16 envs, alpha = 128, 2 epochs x 8 minibatches, clip 0.08 (value loss too), Adam 3.43e-4 decayed
    # linearly (eps 1e-5 is the learner's).
    "football-ppo": Preset("the HTS-RL paper's released GFootball PPO runs", {
        "algo": "ppo", "num_envs": 16, "rollout": 128, "epochs": 2, "minibatches": 8, "clip_coef": 0.08,
        "gamma": 0.993, "gae_lambda": 0.95, "ent_coef": 0.003, "vf_coef": 0.5, "max_grad_norm": 0.64,
        "lr": 3.43e-4, "optimizer": "adam", "anneal_lr": True,
    }),
    # bf16 autocast of the CNN trunk is 2.3-2.7x faster per learner pass on a CPU with AVX-512 bf16; the
    # Pong learning check runs with it (docs/benchmarks.md).
    "atari-ppo": Preset("Atari (any ALE/... id): CleanRL's PPO, with a bf16 CNN trunk", {
        "algo": "ppo", "num_envs": 8, "rollout": 128, "epochs": 4, "minibatches": 4, "lr": 2.5e-4,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.1, "ent_coef": 0.01, "vf_coef": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5, "precision": "bf16",
    }),
    # CleanRL's ppo_continuous_action: batch 2048, 32 minibatches, 10 epochs, lr 3e-4 decayed, running
    # normalisation of observations and rewards; the batch is spread over 8 envs so that collection and
    # learning have something to overlap.
    "mujoco-ppo": Preset("continuous control (MuJoCo, Box2D, Pendulum): CleanRL's continuous PPO", {
        "algo": "ppo", "num_envs": 8, "rollout": 256, "epochs": 10, "minibatches": 32, "lr": 3e-4,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.2, "ent_coef": 0.0, "vf_coef": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5, "normalize_obs": True,
        "normalize_reward": True,
    }),
    # CleanRL's ppo_atari_lstm.py: the atari-ppo settings, one frame instead of four, and a 128-unit LSTM
    # after the CNN that does what the stack did (and more).
    "atari-lstm": Preset("Atari with memory: CleanRL's recurrent PPO (one frame, an LSTM), bf16 CNN trunk", {
        "algo": "ppo", "num_envs": 8, "rollout": 128, "epochs": 4, "minibatches": 4, "lr": 2.5e-4,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.1, "ent_coef": 0.01, "vf_coef": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5, "precision": "bf16", "memory": "lstm",
        "memory_size": 128, "frame_stack": 1,
    }),
    # Procgen, MiniGrid pixels, ViZDoom, ...: frames are shrunk with --frame-size instead of Atari's
    # preprocessing.
    "image-ppo": Preset("image observations outside Atari: CleanRL's Atari PPO settings", {
        "algo": "ppo", "num_envs": 8, "rollout": 128, "epochs": 4, "minibatches": 4, "lr": 2.5e-4,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.1, "ent_coef": 0.01, "vf_coef": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5,
    }),
    # The SB3 zoo's tuned LunarLander settings: 16 envs, minibatches of 64, gamma 0.999, an entropy bonus,
    # and SB3's unclipped value loss (returns reach +-100 in a step, and a value clip of 0.2 holds the
    # critic back). Rollouts are 256 steps instead of 1024: with 61 updates in 1M steps one update of hts
    # lag was a large part of the run, and hts seeds kept hovering where sync ones landed; with 244 both
    # modes land (docs/learning.md). The classic-control defaults hover above the pad instead of landing.
    "box2d-ppo": Preset("Box2D's discrete-action tasks (LunarLander): the SB3 zoo's PPO, shorter rollouts", {
        "algo": "ppo", "num_envs": 16, "rollout": 256, "epochs": 4, "minibatches": 64, "lr": 3e-4,
        "optimizer": "adam", "anneal_lr": False, "clip_coef": 0.2, "clip_vloss": False, "ent_coef": 0.01,
        "vf_coef": 0.5, "gamma": 0.999, "gae_lambda": 0.98, "max_grad_norm": 0.5,
    }),
    "box2d-a2c": Preset("Box2D's discrete-action tasks (LunarLander): the SB3 zoo's A2C", {
        "algo": "a2c", "num_envs": 8, "rollout": 5, "lr": 8.3e-4, "optimizer": "rmsprop", "anneal_lr": True,
        "ent_coef": 1e-5, "gamma": 0.995, "gae_lambda": 1.0,
    }),
    # rl-baselines3-zoo's ppo_lstm.yml for CartPoleNoVel-v1: 8 envs x 32 steps, one minibatch of the whole
    # rollout, lr 1e-3 decayed, gamma 0.98, lambda 0.8, running normalisation, a 64-unit LSTM (the zoo's
    # policy has a second LSTM for the critic; ours is shared, as in CleanRL). Two changes, measured on
    # CartPoleNoVel over 20 seeds (docs/learning.md, "Policies with memory: CartPoleNoVel-v1"): 4 epochs,
    # not the zoo's 20 (both modes learn more), and hts clips against the behaviour policy (hts IQM 492
    # against 384 with the decoupled 'current' trust region; sync is the same either way).
    "pomdp-ppo": Preset("small partially observable tasks (velocities hidden): the SB3 zoo's RecurrentPPO, "
                        "4 epochs, the behaviour trust region", {
        "algo": "ppo", "num_envs": 8, "rollout": 32, "epochs": 4, "minibatches": 1, "lr": 1e-3,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.2, "ent_coef": 0.0, "vf_coef": 0.5,
        "gamma": 0.98, "gae_lambda": 0.8, "max_grad_norm": 0.5, "normalize_obs": True,
        "normalize_reward": True, "memory": "lstm", "memory_size": 64, "ppo_trust_region": "behaviour",
    }),
    "atari-a2c": Preset("Atari (any ALE/... id): the reference A2C, constant rate, bf16 CNN trunk", {
        "algo": "a2c", "num_envs": 16, "rollout": 5, "lr": 7e-4, "optimizer": "rmsprop", "anneal_lr": False,
        "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "precision": "bf16",
    }),
}
