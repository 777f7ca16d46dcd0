"""The one training configuration: a dataclass whose fields are the CLI flags.

Hyperparameters that a preset or the algorithm decides default to ``None``. :meth:`TrainConfig.resolved`
fills each one in from, in order: the chosen ``--preset`` (``PRESETS``), the chosen ``algo``
(``ALGO_DEFAULTS``), then ``BASE_DEFAULTS``; so a value given explicitly always wins over a preset.
It then validates everything, so a bad value is reported in one sentence before any process starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from htsrl_aio.errors import ConfigError


def _opt(help: str, **kwargs: Any) -> Any:
    return field(metadata={"help": help}, **kwargs)


# Defaults that depend on the algorithm, chosen on the learning suite (docs/learning.md). PPO's learn
# classic control quickly with 8 envs (CartPole-v1 reaches a mean return of 500 within 150k-300k steps);
# A2C's are the usual reference implementation's (5-step returns, RMSprop 7e-4) with no entropy bonus, as
# the SB3 zoo uses on classic control, and the learning rate decayed to 0: with a constant rate and a
# 0.01 bonus A2C reached 475 on CartPole-v1 in 1 hts seed of 10, with these in 10 of 10 (sync: 0 and 7).
# Atari, Box2D and football get presets of their own.
BASE_DEFAULTS: dict[str, Any] = {
    "algo": "ppo", "num_envs": 8, "gamma": 0.99, "clip_coef": 0.2, "vf_coef": 0.5, "max_grad_norm": 0.5,
    "precision": "fp32", "normalize_obs": False, "normalize_reward": False,
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

# Named bundles of hyperparameters for an env family; every key is a TrainConfig field left at None.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's released GFootball PPO runs (docs: htsrl.md): 16 envs, alpha = 128, 2 epochs x 8
    # minibatches, clip 0.08 (value loss too), Adam 3.43e-4 decayed linearly (eps 1e-5 is the learner's).
    "football-ppo": {
        "algo": "ppo", "num_envs": 16, "rollout": 128, "epochs": 2, "minibatches": 8, "clip_coef": 0.08,
        "gamma": 0.993, "gae_lambda": 0.95, "ent_coef": 0.003, "vf_coef": 0.5, "max_grad_norm": 0.64,
        "lr": 3.43e-4, "optimizer": "adam", "anneal_lr": True,
    },
    # Atari (any ALE/... id): CleanRL's PPO and the reference A2C. bf16 autocast of the CNN trunk is
    # 2.3-2.7x faster per learner pass on a CPU with AVX-512 bf16; the Pong learning check runs with it
    # (docs/benchmarks.md).
    "atari-ppo": {
        "algo": "ppo", "num_envs": 8, "rollout": 128, "epochs": 4, "minibatches": 4, "lr": 2.5e-4,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.1, "ent_coef": 0.01, "vf_coef": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5, "precision": "bf16",
    },
    # Continuous control (MuJoCo, Box2D, Pendulum): CleanRL's ppo_continuous_action (batch 2048,
    # 32 minibatches, 10 epochs, lr 3e-4 decayed, running normalisation of observations and rewards),
    # with the batch spread over 8 envs so that collection and learning have something to overlap.
    "mujoco-ppo": {
        "algo": "ppo", "num_envs": 8, "rollout": 256, "epochs": 10, "minibatches": 32, "lr": 3e-4,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.2, "ent_coef": 0.0, "vf_coef": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5, "normalize_obs": True,
        "normalize_reward": True,
    },
    # Image observations outside Atari (Procgen, MiniGrid pixels, ViZDoom, ...): CleanRL's Atari PPO
    # settings without Atari's preprocessing; frames are shrunk with --frame-size.
    "image-ppo": {
        "algo": "ppo", "num_envs": 8, "rollout": 128, "epochs": 4, "minibatches": 4, "lr": 2.5e-4,
        "optimizer": "adam", "anneal_lr": True, "clip_coef": 0.1, "ent_coef": 0.01, "vf_coef": 0.5,
        "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5,
    },
    # Box2D's discrete-action tasks (LunarLander): the SB3 zoo's tuned settings for LunarLander (16 envs,
    # minibatches of 64, gamma 0.999, an entropy bonus, and SB3's unclipped value loss: its returns reach
    # +-100 in a step, and a value clip of 0.2 holds the critic back), but rollouts of 256 steps instead
    # of 1024: with 61 updates in 1M steps one update of hts lag was a large part of the run, and hts
    # seeds kept hovering where sync ones landed; with 244 both modes land (docs/learning.md). The
    # classic-control defaults hover above the pad instead of landing.
    "box2d-ppo": {
        "algo": "ppo", "num_envs": 16, "rollout": 256, "epochs": 4, "minibatches": 64, "lr": 3e-4,
        "optimizer": "adam", "anneal_lr": False, "clip_coef": 0.2, "clip_vloss": False, "ent_coef": 0.01,
        "vf_coef": 0.5, "gamma": 0.999, "gae_lambda": 0.98, "max_grad_norm": 0.5,
    },
    "box2d-a2c": {
        "algo": "a2c", "num_envs": 8, "rollout": 5, "lr": 8.3e-4, "optimizer": "rmsprop", "anneal_lr": True,
        "ent_coef": 1e-5, "gamma": 0.995, "gae_lambda": 1.0,
    },
    "atari-a2c": {
        "algo": "a2c", "num_envs": 16, "rollout": 5, "lr": 7e-4, "optimizer": "rmsprop", "anneal_lr": False,
        "ent_coef": 0.01,
        "vf_coef": 0.5, "max_grad_norm": 0.5, "precision": "bf16",
    },
}


# Float hyperparameters that must be finite and not negative: (whether 0 is allowed, a usual value).
# A negative --max-grad-norm flips every gradient, NaN passes `<= 0` checks: both wreck a run silently.
_FLOAT_LIMITS: dict[str, tuple[bool, str]] = {
    "lr": (False, "1e-3"), "clip_coef": (False, "0.2"), "max_grad_norm": (False, "0.5"),
    "ent_coef": (True, "0.01"), "vf_coef": (True, "0.5"),
}
# Settings that change how fast a run goes but not a single bit of it: the only ones a resume may change.
RESUME_OVERRIDABLE = ("workers", "max_batch", "engine_batch", "engine_threads", "learner", "progress",
                      "checkpoint_every", "keep_checkpoints", "stop_timeout", "env_timeout", "ray_address",
                      "ray_actors", "envs_per_actor")
# Copies of the network a run holds: inference, current and behaviour parameters, gradients, Adam's two
# moments.
_NETWORK_COPIES = 6


@dataclass
class TrainConfig:
    """Everything a training run needs. Each field is also a ``htsrl-aio train`` flag."""

    env: str | Callable[[], Any] = _opt(
        "gymnasium id (CartPole-v1) or 'package.module:factory' returning an env", default="CartPole-v1")
    env_kwargs: dict[str, Any] = _opt(
        "keyword arguments for the env: KEY=VALUE ... on the command line (VALUE is JSON, else a string), "
        "a table in a --config file", default_factory=dict)
    env_backend: Literal["auto", "process", "loop", "engine", "ray"] = _opt(
        "where env replicas run: process (worker processes), loop (on the event loop: AsyncEnvs, or any "
        "env for debugging), engine (C++ vector engines: ALE/... and envpool:... ids), ray (Ray actors, "
        "on this machine or across a cluster: needs the ray extra); auto picks engine for ALE/... and "
        "envpool:... ids, loop for an AsyncEnv and process otherwise", default="auto")
    preset: str | None = _opt("named hyperparameters for an env family (see PRESETS); flags given "
                              "explicitly override it", default=None)
    algo: Literal["ppo", "a2c"] | None = _opt("learning algorithm", default=None)
    mode: Literal["hts", "sync"] = _opt(
        "hts: learn on one storage while collecting the other (one update of lag); "
        "sync: barrier every step, learn after collecting (the A2C/PPO baseline)", default="hts")
    num_envs: int | None = _opt("number of env replicas", default=None)
    rollout: int | None = _opt("steps per env per rollout (the sync interval alpha)", default=None)
    total_steps: int = _opt("env steps to train for, over all envs", default=200_000)
    seed: int = _opt("run seed: env seeds, action streams, init and minibatch order derive from it",
                     default=1)
    logdir: str | None = _opt("run directory (default: runs/<env>-<algo>-<mode>-s<seed>)", default=None)
    workers: int | None = _opt("env worker processes (default: number of cores)", default=None)
    engine_batch: int | None = _opt(
        "engine backend: envs per C++ engine; the engines step independently, each in lockstep "
        "(default: half the envs, so one engine steps while the other's actions are inferred, rounded up "
        "to a multiple of --inference-block, so no inference pass is padded)", default=None)
    engine_threads: int | None = _opt(
        "engine backend: C++ threads of each engine (default: the cores divided among the engines)",
        default=None)
    ray_address: str | None = _opt(
        "--env-backend ray: the Ray cluster to run envs on: 'auto' joins the cluster this machine belongs "
        "to (started with `ray start`), an address (host:port, ray://host:port) joins that one; by "
        "default a local Ray instance sized to this machine is started and stopped with the run",
        default=None)
    ray_actors: int | None = _opt(
        "--env-backend ray: Ray actors hosting the envs, spread over the nodes (default: the CPUs Ray "
        "reports, at most num_envs)", default=None)
    envs_per_actor: int | None = _opt(
        "--env-backend ray: envs hosted by each Ray actor, stepped together in one message (another way "
        "to say --ray-actors: num_envs / envs_per_actor actors, rounded up)", default=None)
    max_batch: int | None = _opt("most requests served by one inference call (default: num_envs)",
                                 default=None)
    inference_block: int = _opt(
        "rows per forward pass when deterministic: requests are padded/split into blocks of this fixed "
        "shape, so --max-batch and timing cannot change a single bit", default=8)
    device: Literal["cpu", "cuda", "auto"] = _opt("where inference and learning run", default="cpu")

    lr: float | None = _opt("learning rate", default=None)
    optimizer: Literal["adam", "rmsprop"] | None = _opt("optimizer", default=None)
    anneal_lr: bool | None = _opt("decay the learning rate linearly to 0", default=None)
    gamma: float | None = _opt("discount factor", default=None)
    gae_lambda: float | None = _opt("GAE lambda (1.0 gives n-step returns)", default=None)
    epochs: int | None = _opt("passes over each rollout (PPO)", default=None)
    minibatches: int | None = _opt("minibatches per epoch (PPO); must divide num_envs*rollout",
                                   default=None)
    clip_coef: float | None = _opt("PPO surrogate clip range", default=None)
    ppo_trust_region: Literal["current", "behaviour"] = _opt(
        "hts PPO learns data one update old: 'current' clips around the parameters the update starts "
        "from, importance-weights the lag and takes advantages from their critic (decoupled PPO); "
        "'behaviour' clips against the policy that acted and uses the values it recorded, as the "
        "released HTS-RL code does; sync mode is the same either way",
        default="current")
    clip_vloss: bool | None = _opt("clip the PPO value loss with the same range", default=None)
    norm_adv: bool = _opt("normalise advantages per minibatch", default=True)
    ent_coef: float | None = _opt("entropy bonus coefficient", default=None)
    vf_coef: float | None = _opt("value loss coefficient", default=None)
    max_grad_norm: float | None = _opt("gradient norm clip", default=None)
    hidden: tuple[int, ...] = _opt("MLP hidden layer sizes", default=(64, 64))
    normalize_obs: bool | None = _opt(
        "normalise non-image observations by running mean and std (updated by the learner once per "
        "update, saved in checkpoints)", default=None)
    normalize_reward: bool | None = _opt(
        "scale rewards by the running std of the discounted return (gymnasium's NormalizeReward)",
        default=None)
    model: Literal["auto", "mlp", "cnn"] = _opt(
        "network: auto reads image observations of at least 36x36 with a Nature CNN and the rest with an "
        "MLP; cnn insists on a CNN; mlp flattens everything",
        default="auto")
    precision: Literal["fp32", "bf16"] | None = _opt(
        "arithmetic of the CNN trunk (inference and learning): bf16 autocast is much faster on CPUs "
        "with AVX-512 bf16 and on GPUs", default=None)
    frame_size: tuple[int, ...] | None = _opt(
        "image envs (not Atari, which has its own preprocessing): resize frames to HEIGHT WIDTH",
        default=None)
    grayscale: bool = _opt("image envs: convert RGB frames to one gray channel", default=False)
    frame_stack: int = _opt("image envs: stack this many consecutive frames as channels", default=1)
    atari_sticky: float | None = _opt(
        "Atari: probability of repeating the previous action (default: the id's own, 0.25 for v5)",
        default=None)
    atari_episodic_life: bool = _opt(
        "Atari: a lost life ends the training episode (logged returns stay whole games)", default=False)
    atari_fire_reset: bool = _opt("Atari: press FIRE after a reset in games that need it", default=True)
    atari_noop_max: int = _opt("Atari: at most this many no-op actions after a reset", default=30)
    football_representation: Literal["simple115v2", "extracted"] = _opt(
        "GFootball: simple115v2 (115 floats, MLP) or extracted (72x96 super-mini-map, 4 frames stacked, "
        "CNN)", default="simple115v2")
    football_rewards: Literal["scoring", "scoring,checkpoints"] = _opt(
        "GFootball: scoring (+1/-1 per goal: the return is the paper's score) or scoring,checkpoints "
        "(plus the shaping reward for carrying the ball towards goal)", default="scoring")

    learner: Literal["process", "thread"] = _opt(
        "where the learner runs: its own process (no GIL contention with the event loop; best on CPU) "
        "or a thread of the main process (best with a GPU)", default="process")
    torch_threads: int = _opt(
        "torch intra-op threads for inference and for learning; in hts mode both compute at once, "
        "so keep twice this within the cores", default=1)
    deterministic: bool = _opt(
        "bit-identical results whatever the timing, workers or batch make-up (fixed-shape "
        "inference blocks, deterministic torch algorithms)", default=True)
    progress: bool = _opt("show a live progress line", default=True)
    on_env_error: Literal["stop", "restart"] = _opt(
        "when an env raises or its worker dies: stop the run (checkpointing the last update), or "
        "re-create that env with a new derived seed and go on (counted as env_restarts)", default="stop")
    env_timeout: float = _opt(
        "seconds an env's reset or step may take; one that does not answer in time is an env failure "
        "(stopping the run or, with --on-env-error restart, replacing the env like a crash); 0 turns it "
        "off", default=60.0)
    stop_timeout: float = _opt(
        "on SIGINT/SIGTERM/SIGHUP the run stops at the next swap with a checkpoint that resumes exactly; "
        "if that takes longer than this many seconds, it stops at once with the last completed update",
        default=20.0)
    tensorboard: bool = _opt("write TensorBoard scalars into the run directory (needs the tensorboard extra)",
                             default=True)
    checkpoint_every: int = _opt(
        "write a checkpoint that resumes exactly every this many updates (0: only at the end)", default=50)
    keep_checkpoints: int = _opt("how many of those periodic checkpoints to keep (the newest)", default=3)

    def resolved(self) -> TrainConfig:
        """A copy with preset and algorithm defaults filled in, validated; raise ConfigError otherwise."""
        preset = {}
        if self.preset is not None:
            if self.preset not in PRESETS:
                close = difflib.get_close_matches(self.preset, list(PRESETS), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"choose one of {sorted(PRESETS)}."
                raise ConfigError(f"unknown --preset {self.preset!r}; {hint}")
            preset = PRESETS[self.preset]
        algo = self.algo or preset.get("algo") or BASE_DEFAULTS["algo"]
        if algo not in ALGO_DEFAULTS:
            raise ConfigError(f"unknown --algo {algo!r}; choose one of {sorted(ALGO_DEFAULTS)}.")
        defaults = {**BASE_DEFAULTS, **ALGO_DEFAULTS[algo], **preset, "algo": algo}
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **filled)
        if cfg.workers is None:
            cfg.workers = available_cores()
        if cfg.max_batch is None:
            cfg.max_batch = cfg.num_envs
        if cfg.engine_batch is None and _positive_int(cfg.num_envs) and _positive_int(cfg.inference_block):
            cfg.engine_batch = default_engine_batch(cfg.num_envs, cfg.inference_block)
        if cfg.engine_threads is None:
            engines = -(-cfg.num_envs // cfg.engine_batch) if _positive_int(cfg.engine_batch) else 1
            cfg.engine_threads = max(1, available_cores() // engines)
        cfg.hidden = tuple(cfg.hidden)
        cfg.frame_size = None if cfg.frame_size is None else tuple(cfg.frame_size)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name in ("num_envs", "rollout", "total_steps", "workers", "max_batch", "epochs", "minibatches",
                     "torch_threads", "inference_block", "engine_batch", "engine_threads"):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ConfigError(f"--{_flag(name)} must be a positive integer, got {value!r}.")
        every, keep = self.checkpoint_every, self.keep_checkpoints
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ConfigError(f"--checkpoint-every must be 0 or a positive integer, got {every!r}.")
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ConfigError(f"--keep-checkpoints must be a positive integer, got {keep!r}.")
        if self.mode not in ("hts", "sync"):
            raise ConfigError(f"unknown --mode {self.mode!r}; choose 'hts' or 'sync'.")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"unknown --device {self.device!r}; choose 'cpu', 'cuda' or 'auto'.")
        if self.env_backend not in _choices(typing.get_type_hints(TrainConfig)["env_backend"]):
            raise ConfigError(f"unknown --env-backend {self.env_backend!r}; choose 'auto', 'process', "
                              "'loop', 'engine' or 'ray'.")
        self._validate_ray()
        if not isinstance(self.env_kwargs, dict):
            raise ConfigError(f"--env-kwargs must be KEY=VALUE pairs (a table in TOML), got "
                              f"{self.env_kwargs!r}.")
        if self.on_env_error not in ("stop", "restart"):
            raise ConfigError(f"unknown --on-env-error {self.on_env_error!r}; choose 'stop' or 'restart'.")
        if self.learner not in ("process", "thread"):
            raise ConfigError(f"unknown --learner {self.learner!r}; choose 'process' or 'thread'.")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ConfigError(f"unknown --optimizer {self.optimizer!r}; choose 'adam' or 'rmsprop'.")
        batch = self.num_envs * self.rollout
        if batch % self.minibatches:
            raise ConfigError(
                f"--minibatches {self.minibatches} does not divide the batch of num_envs*rollout = {batch}; "
                "pick a divisor of it.")
        if self.total_steps < batch:
            raise ConfigError(
                f"--total-steps {self.total_steps} is less than one rollout (num_envs*rollout = {batch}); "
                "raise it or shrink the rollout.")
        for name, (zero_ok, usual) in _FLOAT_LIMITS.items():
            value = getattr(self, name)
            if not _real(value) or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
                bound = "0 or more" if zero_ok else "above 0"
                raise ConfigError(f"--{_flag(name)} must be a finite number {bound} (usually about {usual}), "
                                  f"got {value!r}.")
        for name in ("env_timeout", "stop_timeout"):
            value = getattr(self, name)
            if not _real(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{_flag(name)} must be a finite number of seconds, 0 or more, got "
                                  f"{value!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"--seed must be 0 or a positive integer, got {self.seed!r}.")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not _real(value) or not 0.0 <= value <= 1.0:  # NaN fails both comparisons
                raise ConfigError(f"--{_flag(name)} must lie in [0, 1] (usually 0.9-1), got {value!r}.")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"unknown --precision {self.precision!r}; choose 'fp32' or 'bf16'.")
        if self.atari_sticky is not None and not 0.0 <= self.atari_sticky <= 1.0:
            raise ConfigError(f"--atari-sticky is a probability in [0, 1], got {self.atari_sticky}.")
        if self.atari_noop_max < 0:
            raise ConfigError(f"--atari-noop-max must be 0 or more, got {self.atari_noop_max}.")
        for name, choices in (("ppo_trust_region", ("current", "behaviour")),
                              ("football_representation", ("simple115v2", "extracted")),
                              ("football_rewards", ("scoring", "scoring,checkpoints"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown --{_flag(name)} {getattr(self, name)!r}; choose "
                                  f"{' or '.join(map(repr, choices))}.")
        if self.frame_size is not None and (len(self.frame_size) != 2 or min(self.frame_size) < 1):
            raise ConfigError(f"--frame-size takes HEIGHT WIDTH (two positive integers), got "
                              f"{self.frame_size}.")
        if not isinstance(self.frame_stack, int) or self.frame_stack < 1:
            raise ConfigError(f"--frame-stack must be a positive integer, got {self.frame_stack!r}.")
        if any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden sizes must be positive integers, got {self.hidden}.")
        _require_network_fits(self.hidden)

    def _validate_ray(self) -> None:
        ray_flags = [name for name in ("ray_address", "ray_actors", "envs_per_actor")
                     if getattr(self, name) is not None]
        if ray_flags and self.env_backend != "ray":
            raise ConfigError(f"--{_flag(ray_flags[0])} applies to Ray actors only; add --env-backend ray "
                              "or drop it.")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address):
            raise ConfigError(f"--ray-address takes 'auto' or a cluster address (host:port), got "
                              f"{self.ray_address!r}.")
        for name in ("ray_actors", "envs_per_actor"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"--{_flag(name)} must be a positive integer, got {value!r}.")
        actors, per_actor = self.ray_actors, self.envs_per_actor
        if actors is not None and actors > self.num_envs:
            raise ConfigError(f"--ray-actors {actors} is more than the {self.num_envs} envs they would host; "
                              f"use at most --ray-actors {self.num_envs}.")
        if actors is not None and per_actor is not None and actors != -(-self.num_envs // per_actor):
            raise ConfigError(f"--ray-actors {actors} and --envs-per-actor {per_actor} disagree for "
                              f"{self.num_envs} envs ({-(-self.num_envs // per_actor)} actors of at most "
                              f"{per_actor} envs); give one of them.")

    def user_settings(self) -> dict[str, Any]:  # TEMPORARY until the config branch lands
        defaults = TrainConfig()
        return {k: v for k, v in self.to_json_dict().items() if v != getattr(defaults, k)}

    @classmethod
    def for_resume(cls, resolved: dict[str, Any], user: dict[str, Any] | None, overrides: dict[str, Any],
                   where: str) -> TrainConfig:  # TEMPORARY until the config branch lands
        for key in overrides:
            if key not in RESUME_OVERRIDABLE:
                raise ConfigError(f"--{key.replace('_', '-')} cannot change when resuming (the run continues "
                                  f"as configured); only {', '.join(RESUME_OVERRIDABLE)} can.")
        return dataclasses.replace(cls.from_json_dict(resolved, where), **overrides)

    @property
    def num_rollouts(self) -> int:
        """Rollouts (= learner updates) in the run; total_steps is rounded down to whole rollouts."""
        return self.total_steps // (self.num_envs * self.rollout)

    def to_json_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if callable(self.env):
            data["env"] = f"{self.env.__module__}:{getattr(self.env, '__qualname__', repr(self.env))}"
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], where: str) -> TrainConfig:
        """The inverse of to_json_dict (a checkpoint's or config.json's); extra keys are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        if isinstance(values.get("hidden"), list):
            values["hidden"] = tuple(values["hidden"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"the config stored in {where} is not usable: {exc}.") from None


def default_engine_batch(num_envs: int, block: int) -> int:
    """Half the envs rounded up to whole inference blocks, at most all of them: 8 envs with 8-row
    blocks make one engine, 16 make two (docs/benchmarks.md: padded inference passes cost more than
    the overlap of two engines gains)."""
    half = -(-num_envs // 2)
    return min(num_envs, -(-half // block) * block)


def available_cores() -> int:
    """The cores this process may run on (taskset, cgroups' cpusets), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_network_fits(hidden: tuple[int, ...]) -> None:
    """Refuse MLP layers whose copies cannot fit in this machine's memory, before anything allocates."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not reported here: let torch find out
        return
    # At least: the weights between hidden layers, and each unit's bias, input weight and two outputs.
    params = sum(a * b for a, b in itertools.pairwise(hidden)) + 4 * sum(hidden)
    needed = params * 4 * _NETWORK_COPIES
    if needed > memory:
        raise ConfigError(f"--hidden {' '.join(map(str, hidden))} makes a network whose {_NETWORK_COPIES} "
                          f"copies need at least {needed / 2**30:,.0f} GiB, more than this machine's "
                          f"{memory / 2**30:,.0f} GiB of memory; use smaller layers (e.g. --hidden 64 64).")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """TrainConfig fields from a TOML file (keys are field names, e.g. `num_envs = 16`), checked."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid TOML: {exc}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save it as UTF-8.") from None
    hints = typing.get_type_hints(TrainConfig)
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ConfigError(f"unknown key {key!r} in {path}{hint}")
        if not _fits(value, hints[key]):
            choices = _choices(hints[key])
            if choices:
                raise ConfigError(f"{key} in {path} must be one of {', '.join(map(repr, choices))}, got "
                                  f"{value!r}.")
            raise ConfigError(f"{key} in {path} has the wrong type: {value!r}.")
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    return values


def _options(hint: Any) -> tuple[Any, ...]:
    """The types a field accepts: the members of an Optional or Union, or the hint itself."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _choices(hint: Any) -> tuple[Any, ...]:
    """The values a Literal field accepts (empty for other fields)."""
    return tuple(value for option in _options(hint) if typing.get_origin(option) is typing.Literal
                 for value in typing.get_args(option))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a TOML value can stand for a field of type `hint` (ints may stand for floats)."""
    for option in _options(hint):
        origin = typing.get_origin(option)
        if origin is typing.Literal and value in typing.get_args(option):
            return True
        if origin is tuple and isinstance(value, list) and all(isinstance(v, int) for v in value):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in (int, str) and isinstance(value, option) and not isinstance(value, bool):
            return True
        if option is bool and isinstance(value, bool):
            return True
        if typing.get_origin(option) is dict and isinstance(value, dict):
            return True
    return False
