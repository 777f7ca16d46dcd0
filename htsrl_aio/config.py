"""The one training configuration: a dataclass whose fields are the CLI flags.

Hyperparameters that a preset or the algorithm decides default to ``None``. :meth:`TrainConfig.resolved`
fills each one in from, in order: the chosen ``--preset``, the chosen ``algo``, then the base defaults
(``PRESETS``, ``ALGO_DEFAULTS`` and ``BASE_DEFAULTS`` in :mod:`htsrl_aio.presets`); so a value given
explicitly always wins over a preset. It then validates everything, so a bad value is reported in one
sentence before any process starts. Each field carries its own check and its role on resume in its
metadata; only the checks that relate several fields are written out.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
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
from htsrl_aio.presets import ALGO_DEFAULTS, BASE_DEFAULTS, PRESETS

# What a field's value means for resuming a run (the field's "resume" metadata):
#   "kept": it changes results, so a resumed run keeps the stored value;
#   "overridable": an execution setting that changes no bit, which a resumed run may override;
#   "machine": also that, with a default that depends on this machine's cores, so a run resumed on another
#   machine resolves it again there unless the user had set it.
ResumeRole = Literal["kept", "overridable", "machine"]


@dataclass(frozen=True)
class _Check:
    """A rule for one field's value, and the words that complete "--flag ..., got VALUE." when it fails."""

    holds: Callable[[Any], bool]
    rule: str


def _positive_int(value: Any) -> bool:
    return _int(value) and value >= 1


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(usual: str, zero_ok: bool = False) -> _Check:
    """Finite and not negative: a negative --max-grad-norm flips every gradient, and NaN passes `<= 0`
    checks; both wreck a run silently."""
    bound = "0 or more" if zero_ok else "above 0"
    return _Check(lambda v: _real(v) and math.isfinite(v) and (v > 0 or (zero_ok and v == 0)),
                  f"must be a finite number {bound} (usually about {usual})")


def _fraction(note: str) -> _Check:
    return _Check(lambda v: _real(v) and 0.0 <= v <= 1.0, f"must lie in [0, 1] ({note})")  # NaN fails too


_POSITIVE_INT = _Check(_positive_int, "must be a positive integer")
_COUNT = _Check(lambda v: _int(v) and v >= 0, "must be 0 or a positive integer")
_SECONDS = _Check(lambda v: _real(v) and math.isfinite(v) and v >= 0,
                  "must be a finite number of seconds, 0 or more")
_KEY_VALUES = _Check(lambda v: isinstance(v, dict), "must be KEY=VALUE pairs (a table in TOML)")
_RAY_ADDRESS = _Check(lambda v: isinstance(v, str) and v != "",
                      "takes 'auto' or a cluster address (host:port)")
_NAME = _Check(lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty name")
_NAMES = _Check(lambda v: all(isinstance(t, str) and t.strip() != "" for t in v), "must be non-empty names")
_LAYER_SIZES = _Check(lambda v: all(_positive_int(h) for h in v), "sizes must be positive integers")
_FRAME_SIZE = _Check(lambda v: len(v) == 2 and all(_positive_int(s) for s in v),
                     "takes HEIGHT WIDTH (two positive integers)")


def _opt(help: str, *, check: _Check | None = None, resume: ResumeRole = "kept", **kwargs: Any) -> Any:
    """A TrainConfig field: its --help text, its own check (a Literal field's comes from its type) and
    what it means for resuming."""
    return field(metadata={"help": help, "check": check, "resume": resume}, **kwargs)


# Copies of the network a run holds: inference, current and behaviour parameters, gradients, Adam's two
# moments.
_NETWORK_COPIES = 6

# --inference-block's defaults (default_inference_block): rows of a CNN pass cost real work (Atari:
# half-padded 8-row passes already cost more than a second engine's overlap gains); an MLP pass costs its
# dispatch, so its block grows with the rows up to this.
CNN_INFERENCE_BLOCK = 8
MLP_INFERENCE_BLOCK = 64


@dataclass
class TrainConfig:
    """Everything a training run needs. Each field is also a ``htsrl-aio train`` flag."""

    env: str | Callable[[], Any] = _opt(
        "gymnasium id (CartPole-v1) or 'package.module:factory' returning an env", default="CartPole-v1")
    env_kwargs: dict[str, Any] = _opt(
        "keyword arguments for the env: KEY=VALUE ... on the command line (VALUE is JSON, else a string), "
        "a table in a --config file", check=_KEY_VALUES, default_factory=dict)
    env_backend: Literal["auto", "process", "loop", "engine", "ray"] = _opt(
        "where env replicas run: process (worker processes), loop (on the event loop: AsyncEnvs, or a plain "
        "env for debugging with --env-timeout 0), engine (C++ vector engines: ALE/... and envpool:... ids), "
        "ray (Ray actors, on this machine or across a cluster: needs the ray extra); auto picks engine for "
        "ALE/... and envpool:... ids, loop for an AsyncEnv and process otherwise", default="auto")
    agent_id: bool = _opt(
        "multi-agent envs (PettingZoo ParallelEnv): each agent's observation carries its one-hot agent "
        "index as the observation key 'agent_id', so the shared policy can tell the agents apart",
        default=False)
    critic: Literal["local", "global"] = _opt(
        "multi-agent envs: what the value head reads; local (IPPO) the agent's own observation, global "
        "(MAPPO) the env's global state (its state(), else every agent's observation concatenated, plus "
        "the agent's index with --agent-id) while the actor reads the agent's own observation",
        default="local")
    action_mask: Literal["auto", "off"] = _opt(
        "legal-action masks (Discrete and MultiDiscrete actions): auto applies the mask an env offers (an "
        "'action_mask' observation key, an action_masks() method, or info['action_mask']), so a masked "
        "action is never sampled; off ignores it (an 'action_mask' key is then an ordinary observation)",
        default="auto")
    preset: str | None = _opt("named hyperparameters for an env family (see PRESETS); flags given "
                              "explicitly override it", default=None)
    algo: Literal["ppo", "a2c"] | None = _opt("learning algorithm", default=None)
    mode: Literal["hts", "sync"] = _opt(
        "hts: learn on one storage while collecting the other (one update of lag); "
        "sync: barrier every step, learn after collecting (the A2C/PPO baseline)", default="hts")
    num_envs: int | None = _opt("number of env replicas", check=_POSITIVE_INT, default=None)
    rollout: int | None = _opt("steps per env per rollout (the sync interval alpha)", check=_POSITIVE_INT,
                               default=None)
    total_steps: int = _opt("env steps to train for, over all envs", check=_POSITIVE_INT, default=200_000)
    seed: int = _opt("run seed: env seeds, action streams, init and minibatch order derive from it",
                     check=_COUNT, default=1)
    logdir: str | None = _opt("run directory (default: runs/<env>-<algo>-<mode>-s<seed>)", default=None)
    workers: int | None = _opt("env worker processes (default: number of cores)", check=_POSITIVE_INT,
                               resume="machine", default=None)
    engine_batch: int | None = _opt(
        "engine backend: envs per C++ engine; the engines step independently, each in lockstep "
        "(default: half the envs, so one engine steps while the other's actions are inferred, rounded up "
        "to a multiple of --inference-block, so no inference pass is padded)", check=_POSITIVE_INT,
        resume="machine", default=None)
    engine_threads: int | None = _opt(
        "engine backend: C++ threads of each engine (default: the cores divided among the engines)",
        check=_POSITIVE_INT, resume="machine", default=None)
    ray_address: str | None = _opt(
        "--env-backend ray: the Ray cluster to run envs on: 'auto' joins the cluster this machine belongs "
        "to (started with `ray start`), an address (host:port, ray://host:port) joins that one; by "
        "default a local Ray instance sized to this machine is started and stopped with the run",
        check=_RAY_ADDRESS, resume="overridable", default=None)
    ray_actors: int | None = _opt(
        "--env-backend ray: Ray actors hosting the envs, spread over the nodes (default: the CPUs Ray "
        "reports, at most num_envs)", check=_POSITIVE_INT, resume="overridable", default=None)
    envs_per_actor: int | None = _opt(
        "--env-backend ray: envs hosted by each Ray actor, stepped together in one message (another way "
        "to say --ray-actors: num_envs / envs_per_actor actors, rounded up)", check=_POSITIVE_INT,
        resume="overridable", default=None)
    max_batch: int | None = _opt("most requests served by one inference call (default: every row: "
                                 "num_envs, times the agents of a multi-agent env)",
                                 check=_POSITIVE_INT, resume="machine", default=None)
    inference_block: int | None = _opt(
        "rows per forward pass when deterministic: requests are padded/split into blocks of this fixed "
        "shape, so --max-batch and timing cannot change a single bit (default: "
        f"{CNN_INFERENCE_BLOCK} when a CNN reads the observations, whose padded rows cost real work; "
        f"otherwise the envs' rows rounded up to a multiple of {CNN_INFERENCE_BLOCK}, at most "
        f"{MLP_INFERENCE_BLOCK}, since such a pass costs its dispatch more than its rows)",
        check=_POSITIVE_INT, default=None)
    device: Literal["cpu", "cuda", "auto"] = _opt("where inference and learning run", default="cpu")

    lr: float | None = _opt("learning rate", check=_number("1e-3"), default=None)
    optimizer: Literal["adam", "rmsprop"] | None = _opt("optimizer", default=None)
    anneal_lr: bool | None = _opt("decay the learning rate linearly to 0", default=None)
    gamma: float | None = _opt("discount factor", check=_fraction("usually 0.9-1"), default=None)
    gae_lambda: float | None = _opt("GAE lambda (1.0 gives n-step returns)", check=_fraction("usually 0.9-1"),
                                    default=None)
    epochs: int | None = _opt("passes over each rollout (PPO)", check=_POSITIVE_INT, default=None)
    minibatches: int | None = _opt("minibatches per epoch (PPO); must divide num_envs*rollout",
                                   check=_POSITIVE_INT, default=None)
    clip_coef: float | None = _opt("PPO surrogate clip range", check=_number("0.2"), default=None)
    ppo_trust_region: Literal["current", "behaviour"] | None = _opt(
        "hts PPO learns data one update old: 'current' clips around the parameters the update starts "
        "from, importance-weights the lag and takes advantages from their critic (decoupled PPO); "
        "'behaviour' clips against the policy that acted and uses the values it recorded, as the "
        "released HTS-RL code does; sync mode is the same either way",
        default=None)
    clip_vloss: bool | None = _opt(
        "clip the PPO value loss with the same range (a value then moves at most that much per update: "
        "with large unnormalised returns pair it with --normalize-reward, or turn it off)", default=None)
    norm_adv: bool = _opt("normalise advantages per minibatch", default=True)
    ent_coef: float | None = _opt("entropy bonus coefficient", check=_number("0.01", zero_ok=True),
                                  default=None)
    vf_coef: float | None = _opt("value loss coefficient", check=_number("0.5", zero_ok=True), default=None)
    max_grad_norm: float | None = _opt("gradient norm clip", check=_number("0.5"), default=None)
    hidden: tuple[int, ...] = _opt("MLP hidden layer sizes", check=_LAYER_SIZES, default=(64, 64))
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
    memory: Literal["none", "lstm", "gru"] | None = _opt(
        "a recurrent core between the encoder and the heads, for partially observable envs: each env's "
        "state is carried through its episode and reset where one begins (default: none)", default=None)
    memory_size: int | None = _opt("units of the --memory core (default 128; an LSTM's state holds twice "
                                   "as many floats)", check=_POSITIVE_INT, default=None)
    bptt: int = _opt(
        "--memory: the learner replays sequences of this many steps, each from the state stored at its "
        "start (0: each env's whole rollout); must divide --rollout", check=_COUNT, default=0)
    precision: Literal["fp32", "bf16"] | None = _opt(
        "arithmetic of the CNN trunk (inference and learning): bf16 autocast is much faster on CPUs "
        "with AVX-512 bf16 and on GPUs", default=None)
    torch_compile: Literal["none", "learner", "all"] = _opt(
        "run the observation encoder (a CNN trunk) through torch.compile: in the learner, or in the learner "
        "and inference; faster for image policies, other bits than eager, the first update waits for the "
        "compilation (needs a C++ compiler on a CPU)", default="none")
    frame_size: tuple[int, ...] | None = _opt(
        "image envs: resize frames to HEIGHT WIDTH (every image of a Dict or Tuple observation; ALE ids "
        "and EnvPool tasks with a frame size option: the engine's own, default 84 84)",
        check=_FRAME_SIZE, default=None)
    grayscale: bool = _opt("image envs: convert RGB frames to one gray channel (ALE ids' frames are gray "
                           "already)", default=False)
    frame_stack: int | None = _opt(
        "image envs: stack this many consecutive frames as channels (default: 1; 4 on ALE ids, EnvPool's "
        "Atari and GFootball tasks)", check=_POSITIVE_INT, default=None)
    atari_sticky: float | None = _opt(
        "Atari: probability of repeating the previous action (default: the id's own, 0.25 for v5)",
        check=_fraction("the probability of repeating an action"), default=None)
    atari_episodic_life: bool = _opt(
        "Atari: a lost life ends the training episode (logged returns stay whole games)", default=False)
    atari_fire_reset: bool = _opt("Atari: press FIRE after a reset in games that need it", default=True)
    atari_noop_max: int = _opt("Atari: at most this many no-op actions after a reset", check=_COUNT,
                               default=30)
    football_representation: Literal["simple115v2", "extracted"] = _opt(
        "GFootball: simple115v2 (115 floats, MLP) or extracted (72x96 super-mini-map, 4 frames stacked, "
        "CNN)", default="simple115v2")
    football_rewards: Literal["scoring", "scoring,checkpoints"] = _opt(
        "GFootball: scoring (+1/-1 per goal: the return is the paper's score) or scoring,checkpoints "
        "(plus the shaping reward for carrying the ball towards goal)", default="scoring")
    football_players: int = _opt(
        "GFootball: control this many left-team players, each an agent of a multi-agent env with one "
        "shared policy (README 'Multi-agent'); 1 controls the active player", check=_POSITIVE_INT, default=1)

    learner: Literal["process", "thread"] = _opt(
        "where the learner runs: its own process (no GIL contention with the event loop; best on CPU) "
        "or a thread of the main process (best with a GPU)", resume="overridable", default="process")
    torch_threads: int = _opt(
        "torch intra-op threads for inference and for learning; in hts mode both compute at once, "
        "so keep twice this within the cores", check=_POSITIVE_INT, default=1)
    deterministic: bool = _opt(
        "bit-identical results whatever the timing, workers or batch make-up (fixed-shape "
        "inference blocks, deterministic torch algorithms)", default=True)
    progress: bool = _opt("show a live progress line", resume="overridable", default=True)
    on_env_error: Literal["stop", "restart"] = _opt(
        "when an env raises or its worker dies: stop the run (checkpointing the last update), or "
        "re-create that env with a new derived seed and go on (counted as env_restarts)", default="stop")
    env_timeout: float = _opt(
        "seconds an env's reset or step may take; one that does not answer in time is an env failure "
        "(stopping the run or, with --on-env-error restart, replacing the env like a crash); 0 turns it "
        "off", check=_SECONDS, resume="overridable", default=60.0)
    stop_timeout: float = _opt(
        "on SIGINT/SIGTERM/SIGHUP the run stops at the next swap with a checkpoint that resumes exactly; "
        "if that takes longer than this many seconds, it stops at once with the last completed update",
        check=_SECONDS, resume="overridable", default=20.0)
    tensorboard: bool = _opt("write TensorBoard scalars into the run directory (needs the tensorboard extra)",
                             default=True)
    wandb_project: str | None = _opt(
        "log the run to this Weights & Biases project: config.json, every update's metrics at its "
        "global_step, the versions; --resume continues the same W&B run (needs the wandb extra; "
        "WANDB_MODE=offline logs without an account)", check=_NAME, resume="overridable", default=None)
    wandb_entity: str | None = _opt("--wandb-project: the W&B user or team that owns the project (default: "
                                    "your default entity)", check=_NAME, resume="overridable", default=None)
    wandb_group: str | None = _opt("--wandb-project: the W&B group of the run (e.g. one per experiment)",
                                   check=_NAME, resume="overridable", default=None)
    wandb_tags: tuple[str, ...] = _opt("--wandb-project: tags of the W&B run", check=_NAMES,
                                       resume="overridable", default=())
    mlflow: bool = _opt(
        "log the run to MLflow: the settings as params, the versions as tags, every update's metrics at "
        "its global_step, config.json and summary.json as artifacts; --resume continues the same MLflow "
        "run (needs the mlflow extra)", resume="overridable", default=False)
    mlflow_uri: str | None = _opt(
        "--mlflow: the tracking URI (a server's http://HOST:5000, or a database URL); default: the SQLite "
        "database mlflow.db in the run directory", check=_NAME, resume="overridable", default=None)
    checkpoint_every: int = _opt(
        "write a checkpoint that resumes exactly every this many updates (0: only at the end)", check=_COUNT,
        resume="overridable", default=50)
    keep_checkpoints: int = _opt("how many of those periodic checkpoints to keep (the newest)",
                                 check=_POSITIVE_INT, resume="overridable", default=3)

    def resolved(self) -> TrainConfig:
        """A copy with preset, algorithm and machine defaults filled in, validated; raise ConfigError
        otherwise."""
        cfg = dataclasses.replace(self, **self._hyperparameter_defaults())
        cfg.hidden = tuple(cfg.hidden)
        cfg.frame_size = None if cfg.frame_size is None else tuple(cfg.frame_size)
        cfg.wandb_tags = tuple(cfg.wandb_tags)
        cfg._check_fields()
        cfg._fill_machine_defaults()
        cfg._check_batch()
        cfg._check_memory()
        cfg._check_ray()
        cfg._check_wandb()
        _require_network_fits(cfg.hidden)
        return cfg

    def fitted_to_model(self, cnn: bool, rows: int) -> TrainConfig:
        """This config resolved for the run's network (`cnn`: a CNN reads the observations) and its `rows`
        (num_envs x agents per env): the defaults of the inference block and of --max-batch, and the engine
        defaults that follow the block. The block is part of a run's bits, so a run stores the number and a
        resumed run keeps it."""
        block = self.inference_block or default_inference_block(cnn, rows)
        # A multi-agent env's agents are rows too: capped at num_envs, one loop iteration's requests of
        # 8 three-agent envs took 3 passes.
        return dataclasses.replace(self, inference_block=block, max_batch=self.max_batch or rows).resolved()

    def _hyperparameter_defaults(self) -> dict[str, Any]:
        """The values of the preset, the algorithm and the base defaults for the fields left at None."""
        preset: dict[str, Any] = {}
        if self.preset is not None:
            if self.preset not in PRESETS:
                close = difflib.get_close_matches(self.preset, list(PRESETS), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"choose one of {sorted(PRESETS)}."
                raise ConfigError(f"unknown --preset {self.preset!r}; {hint}")
            preset = PRESETS[self.preset].values
        algo = self.algo or preset.get("algo") or BASE_DEFAULTS["algo"]
        if algo not in ALGO_DEFAULTS:  # checked here: the algorithm picks the defaults
            raise ConfigError(_unknown_choice("algo", algo, tuple(ALGO_DEFAULTS)))
        defaults = {**BASE_DEFAULTS, **ALGO_DEFAULTS[algo], **preset, "algo": algo}
        return {k: v for k, v in defaults.items() if getattr(self, k) is None}

    def _check_fields(self) -> None:
        """Each field's own check: its metadata's, or the choices of its Literal type. None passes where it
        is the default (unset: resolved later, or off)."""
        hints = _type_hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            choices = _choices(hints[f.name])
            if choices and value not in choices:
                raise ConfigError(_unknown_choice(f.name, value, choices))
            check: _Check | None = f.metadata["check"]
            if check is not None and not check.holds(value):
                raise ConfigError(f"--{_flag(f.name)} {check.rule}, got {value!r}.")

    def _fill_machine_defaults(self) -> None:
        """Resolve the execution settings left unset, from the (checked) envs and this machine's cores."""
        if self.workers is None:
            self.workers = available_cores()
        if self.inference_block is None:  # these follow the probed env's rows and network: fitted_to_model
            return
        if self.engine_batch is None:
            self.engine_batch = default_engine_batch(self.num_envs, self.inference_block)
        if self.engine_threads is None:
            engines = -(-self.num_envs // self.engine_batch)
            self.engine_threads = max(1, available_cores() // engines)

    def _check_batch(self) -> None:
        batch = self.num_envs * self.rollout
        if batch % self.minibatches:
            raise ConfigError(
                f"--minibatches {self.minibatches} does not divide the batch of num_envs*rollout = {batch}; "
                "pick a divisor of it.")
        if self.total_steps < batch:
            raise ConfigError(
                f"--total-steps {self.total_steps} is less than one rollout (num_envs*rollout = {batch}); "
                "raise it or shrink the rollout.")

    def _check_memory(self) -> None:
        """--memory minibatches are made of whole sequences (an env's rollout, or --bptt chunks of it)."""
        if self.memory == "none":
            if self.bptt:
                raise ConfigError("--bptt applies to policies with memory; add --memory lstm or gru, or drop "
                                  "it.")
            return
        if self.bptt and self.rollout % self.bptt:
            raise ConfigError(f"--bptt {self.bptt} does not divide --rollout {self.rollout}; pick a divisor "
                              "of it (0 replays each env's whole rollout).")
        sequences = self.num_envs * (self.rollout // (self.bptt or self.rollout))
        if self.algo == "ppo" and sequences % self.minibatches:
            raise ConfigError(
                f"--memory splits each rollout into {sequences} sequences (num_envs x rollout / bptt), which "
                f"--minibatches {self.minibatches} does not divide; pick a divisor of {sequences}, or set "
                "--bptt to cut the rollout into more sequences.")

    def _check_ray(self) -> None:
        ray_flags = [name for name in ("ray_address", "ray_actors", "envs_per_actor")
                     if getattr(self, name) is not None]
        if ray_flags and self.env_backend != "ray":
            raise ConfigError(f"--{_flag(ray_flags[0])} applies to Ray actors only; add --env-backend ray "
                              "or drop it.")
        actors, per_actor = self.ray_actors, self.envs_per_actor
        if actors is not None and actors > self.num_envs:
            raise ConfigError(f"--ray-actors {actors} is more than the {self.num_envs} envs they would host; "
                              f"use at most --ray-actors {self.num_envs}.")
        if actors is not None and per_actor is not None and actors != -(-self.num_envs // per_actor):
            raise ConfigError(f"--ray-actors {actors} and --envs-per-actor {per_actor} disagree for "
                              f"{self.num_envs} envs ({-(-self.num_envs // per_actor)} actors of at most "
                              f"{per_actor} envs); give one of them.")

    def _check_wandb(self) -> None:
        given = [name for name in ("wandb_entity", "wandb_group", "wandb_tags") if getattr(self, name)]
        if given and self.wandb_project is None:
            raise ConfigError(f"--{_flag(given[0])} applies to W&B logging; add --wandb-project or drop it.")

    @property
    def num_rollouts(self) -> int:
        """Rollouts (= learner updates) in the run; total_steps is rounded down to whole rollouts."""
        return self.total_steps // (self.num_envs * self.rollout)

    def rounded_steps_note(self) -> str | None:
        """Of a resolved config: the sentence saying the run trains fewer env steps than --total-steps
        asks, because it trains whole rollouts only; None when it trains exactly that many."""
        batch = self.num_envs * self.rollout
        trained = self.num_rollouts * batch
        if trained == self.total_steps:
            return None
        preset = PRESETS[self.preset].values if self.preset is not None else {}
        source = (f" (the values of --preset {self.preset})"
                  if (preset.get("num_envs"), preset.get("rollout")) == (self.num_envs, self.rollout) else "")
        return (f"note: training {trained:,} env steps, not --total-steps {self.total_steps:,}: a run trains "
                f"whole rollouts of num_envs x rollout = {self.num_envs} x {self.rollout} = {batch:,} "
                f"steps{source}; give a multiple of {batch:,} to train exactly that many.")

    def to_json_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values; an env factory becomes its 'module:qualname'."""
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

    def user_settings(self) -> dict[str, Any]:
        """The settings given explicitly: the fields of this config as given (before `resolved()`) that
        differ from their defaults, JSON-ready like `to_json_dict`. Stored beside the resolved config, they
        tell a run resumed on another machine which machine-dependent settings to keep (`for_resume`)."""
        defaults = TrainConfig().to_json_dict()
        return {name: value for name, value in self.to_json_dict().items() if value != defaults[name]}

    @classmethod
    def for_resume(cls, resolved: dict[str, Any], user: dict[str, Any] | None, overrides: dict[str, Any],
                   where: str) -> TrainConfig:
        """The resolved, validated config of a run resumed on this machine.

        `resolved` is the run's stored resolved config (`to_json_dict`), `user` its stored `user_settings()`
        (None for checkpoints written before those were stored), `overrides` the settings given for the
        resumed run, and `where` names the checkpoint in messages. Every setting that can change a bit keeps
        its stored value. The machine-dependent ones (MACHINE_DEPENDENT) that the user had not set are
        resolved again here, so a run started on 64 cores does not start 64 workers on a laptop; without
        `user` they keep their stored values. `overrides`, which may name only RESUME_OVERRIDABLE settings,
        win over both.
        """
        for key in overrides:
            if key not in RESUME_OVERRIDABLE:
                raise ConfigError(f"--{_flag(key)} cannot change when resuming (the run continues as "
                                  f"configured); only {', '.join(RESUME_OVERRIDABLE)} can.")
        stored = cls.from_json_dict(resolved, where)
        if stored.frame_stack == 1 and "frame_stack" not in (user or {}):
            # Runs stored before frame_stack's default became None recorded 1 for "the env's own stack"
            # (4 on ALE ids, EnvPool's Atari and GFootball), which None means now.
            stored.frame_stack = None
        again = {} if user is None else {name: None for name in MACHINE_DEPENDENT if name not in user}
        # resolved() fills only what is None: the stored hyperparameters and the overrides stay as they are.
        return dataclasses.replace(stored, **{**again, **overrides}).resolved()

    def learner_settings(self) -> LearnerSettings:
        """The settings the learner reads, small and picklable (no env factory), of this config resolved.
        Resolving a resolved config again leaves every one of them as it is."""
        cfg = self.resolved()
        return LearnerSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LearnerSettings)})


# Settings a resumed run may change: the execution ones, which change no bit of the results.
RESUME_OVERRIDABLE: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] != "kept")
# Those of them whose defaults depend on the machine, resolved again when a run resumes elsewhere.
MACHINE_DEPENDENT: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] == "machine")


@dataclass(frozen=True)
class LearnerSettings:
    """The part of a resolved TrainConfig that the learner reads; small enough to send to its process."""

    algo: Literal["ppo", "a2c"]
    seed: int
    num_rollouts: int
    lr: float
    anneal_lr: bool
    optimizer: Literal["adam", "rmsprop"]
    epochs: int
    minibatches: int
    clip_coef: float
    clip_vloss: bool
    vf_coef: float
    ent_coef: float
    max_grad_norm: float
    norm_adv: bool
    gamma: float
    gae_lambda: float
    ppo_trust_region: Literal["current", "behaviour"]
    torch_threads: int
    deterministic: bool
    memory: Literal["none", "lstm", "gru"]
    bptt: int
    torch_compile: Literal["none", "learner", "all"]


def default_inference_block(cnn: bool, rows: int) -> int:
    """--inference-block's default. A CNN's rows cost real work, so its blocks stay small and few rows are
    padding. An MLP (or an LSTM over one) pays for a pass with its torch dispatch far more than with its
    rows: on the 2-core Xeon the head's core-µs per env step at 128 envs were 28.5 with blocks of 8 and
    13.6 with 64 (docs/benchmarks.md). Its block is the rows that can be ready at once, in whole 8-row
    blocks, up to 64: rows past that would only be padding."""
    if cnn:
        return CNN_INFERENCE_BLOCK
    return min(MLP_INFERENCE_BLOCK, -(-rows // CNN_INFERENCE_BLOCK) * CNN_INFERENCE_BLOCK)


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


def _unknown_choice(name: str, value: Any, choices: tuple[Any, ...]) -> str:
    """The sentence refusing a value outside a field's choices, e.g. "unknown --mode 'x'; choose 'hts' or
    'sync'."."""
    names = [repr(choice) for choice in choices]
    either = " or ".join(part for part in (", ".join(names[:-1]), names[-1]) if part)
    return f"unknown --{_flag(name)} {value!r}; choose {either}."


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


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
    return checked_config_values(values, str(path))


def checked_config_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """TrainConfig fields read from TOML (`where` names them in messages), each a field with a value of
    its type; `hidden` becomes a tuple."""
    for key, value in values.items():
        check_config_value(key, value, where)
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    return values


def check_config_value(key: str, value: Any, where: str) -> None:
    """Refuse, in one sentence, a key that is no TrainConfig field or a TOML value that cannot stand for
    it."""
    hints = _type_hints()
    if key not in hints:
        close = difflib.get_close_matches(key, list(hints), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigError(f"unknown key {key!r} in {where}{hint}")
    if not _fits(value, hints[key]):
        choices = _choices(hints[key])
        if choices:
            raise ConfigError(f"{key} in {where} must be one of {', '.join(map(repr, choices))}, got "
                              f"{value!r}.")
        raise ConfigError(f"{key} in {where} has the wrong type: {value!r}.")


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
        if origin is tuple and isinstance(value, list) and all(_fits(v, typing.get_args(option)[0])
                                                                for v in value):
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
