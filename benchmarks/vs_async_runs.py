"""One run of one learner for benchmarks/vs_async.py, in whichever virtual environment that learner needs.

    python benchmarks/vs_async_runs.py LEARNER --task TASK --logdir DIR [--seconds S | --steps N] ...

LEARNER is hts or sync (htsrl-aio, /work/venv), sf (Sample Factory 2 APPO, its own venv: it pins
numpy < 2 and gymnasium < 1.0) or rllib (RLlib APPO on Ray's new API stack, its own venv: ray[rllib] pins
a gymnasium of its own). Only the standard library is imported at the top, so the file runs in all three.

Every learner writes the same two files into DIR, so vs_async.py reads them all alike:

- metrics.jsonl: rows of global_step (env steps, agent steps: one step is 4 Atari frames),
  wall_time_s (since this process started, so start-up counts against every learner alike) and
  episode_return_mean (the learner's own window of recent episodes: the last 100 for all three);
- summary.json: steps, wall time, the policy lag the learner ran at, and a sha256 of the final
  parameters (runs with `--steps` only: a run cut by the clock is not meant to repeat).

Tasks (the same env for every learner):

- latency-cartpole: CartPole-v1 whose every step sleeps an exponential delay of mean `--latency-ms`
  (`LatencyCartPole`, a gymnasium wrapper; its timing noise is outside every seed), the paper's regime;
- pong: ALE/Pong-v5 preprocessed as htsrl-aio's atari-ppo preset sees it: sticky actions 0.25, 4-frame
  skip with max-pooling, up to 30 no-op resets, fire reset, 84x84 gray, a stack of 4 frames, no episodic
  life. htsrl-aio does this in ale-py's C++ AtariVectorEnv, Sample Factory with gymnasium's
  AtariPreprocessing, RLlib with its own `wrap_atari_for_new_api_stack`;
- football: Google Research Football's academy_empty_goal_close (gfootball 2.10.2 built from source, in
  every learner's venv: scripts/install-football.sh), the 115-float `simple115v2` observation, the
  `scoring` reward, episodes of at most 400 steps; htsrl-aio through its `gfootball/` adapter, Sample
  Factory and RLlib through `football`, a gymnasium wrapper of the same game.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

START = time.time()

PPO_SETTINGS = {
    # htsrl-aio's PPO defaults (classic control) and its atari-ppo preset; the learning rate stays constant
    # for everyone, because a decay to 0 over a step budget has no meaning under a wall-clock budget.
    "latency-cartpole": {"rollout": 64, "lr": 1e-3, "epochs": 4, "minibatches": 4, "clip": 0.2, "ent": 0.0,
                         "gamma": 0.99, "lam": 0.95, "vf": 0.5, "max_grad_norm": 0.5},
    "pong": {"rollout": 128, "lr": 2.5e-4, "epochs": 4, "minibatches": 4, "clip": 0.1, "ent": 0.01,
             "gamma": 0.99, "lam": 0.95, "vf": 0.5, "max_grad_norm": 0.5},
    # the football-ppo preset (the paper's released GFootball PPO settings)
    "football": {"rollout": 128, "lr": 3.43e-4, "epochs": 2, "minibatches": 8, "clip": 0.08, "ent": 0.003,
                 "gamma": 0.993, "lam": 0.95, "vf": 0.5, "max_grad_norm": 0.64},
}
# The MLP of latency-cartpole and football (htsrl-aio's default); Pong uses the Nature CNN everywhere.
HIDDEN = (64, 64)
FOOTBALL_SCENARIO = "academy_empty_goal_close"
MLP_TASK_ENVS = {"latency-cartpole": "vs_async_latency_cartpole", "football": "vs_async_football"}


def latency_cartpole(latency_ms: float = 5.0) -> Any:
    """CartPole-v1 whose step sleeps an exponential delay (mean `latency_ms`): a step time that varies."""
    import gymnasium as gym

    class LatencyCartPole(gym.Wrapper):
        def __init__(self, env: gym.Env, mean_s: float) -> None:
            super().__init__(env)
            self.mean_s = mean_s
            self.noise = random.Random()  # timing noise stays outside every seed

        def step(self, action: Any) -> Any:
            time.sleep(self.noise.expovariate(1 / self.mean_s))
            return self.env.step(action)

    return LatencyCartPole(gym.make("CartPole-v1"), latency_ms / 1000)


def football() -> Any:
    """gfootball's game (old gym API) as a gymnasium env, for Sample Factory and RLlib: the same scenario,
    observation and reward as htsrl-aio's `gfootball/` adapter; the end of an episode (a goal, the ball
    lost, or its 400 steps) is a termination there too."""
    import gfootball.env
    import gymnasium as gym
    import numpy as np

    class Football(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (115,), np.float32)
        action_space = gym.spaces.Discrete(19)

        def __init__(self) -> None:
            self.game = gfootball.env.create_environment(
                env_name=FOOTBALL_SCENARIO, representation="simple115v2", rewards="scoring", render=False)

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            super().reset(seed=seed)
            return np.asarray(self.game.reset(), np.float32), {}

        def step(self, action: Any) -> Any:
            observation, reward, done, _ = self.game.step(int(action))
            return np.asarray(observation, np.float32), float(reward), bool(done), False, {}

        def close(self) -> None:
            self.game.close()

    return Football()


def write_row(file: Any, steps: int, ret: float | None) -> None:
    file.write(json.dumps({"global_step": int(steps), "wall_time_s": time.time() - START,
                           "episode_return_mean": ret}) + "\n")


def state_sha256(state: dict[str, Any]) -> str:
    """sha256 over a state dict's tensors in key order: equal only for equal bits."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- htsrl-aio

def run_htsrl(args: argparse.Namespace) -> dict[str, Any]:
    from htsrl_aio import TrainConfig, Trainer
    from htsrl_aio.trainer import RunStopped
    from htsrl_aio.training import run_event_loop  # uvloop when installed, as `htsrl-aio train` runs

    p = PPO_SETTINGS[args.task]
    if args.task == "pong":
        task: dict[str, Any] = {"env": "ALE/Pong-v5", "preset": "atari-ppo"}
    elif args.task == "football":
        task = {"env": f"gfootball/{FOOTBALL_SCENARIO}", "preset": "football-ppo", "hidden": HIDDEN}
    else:
        task = {"env": "vs_async_runs:latency_cartpole", "env_kwargs": {"latency_ms": args.latency_ms},
                "hidden": HIDDEN, "rollout": p["rollout"], "lr": p["lr"], "epochs": p["epochs"],
                "minibatches": p["minibatches"], "clip_coef": p["clip"], "ent_coef": p["ent"]}
    budget = args.steps or 10**12
    config = TrainConfig(**task, mode=args.learner, num_envs=args.num_envs, workers=args.workers,
                         seed=args.seed, anneal_lr=False, total_steps=budget, progress=False,
                         logdir=str(args.logdir / "run"), checkpoint_every=0)
    lags: list[int] = []

    async def train(file: Any) -> dict[str, Any]:
        async with Trainer(config) as trainer:
            try:
                async for row in trainer.updates():
                    lags.append(row["policy_lag"])
                    write_row(file, row["global_step"], row["episode_return_mean"])
                    if args.seconds and time.time() - START >= args.seconds:
                        trainer.stop_at_next_swap()
            except RunStopped:
                return {}
            return {"final_params_sha256": trainer.summary["final_params_sha256"]}

    with open(args.logdir / "metrics.jsonl", "w", buffering=1) as file:
        out = run_event_loop(train(file))
    return {**out, "policy_lag_updates": {"min": min(lags), "avg": sum(lags) / len(lags), "max": max(lags)},
            "lag_note": "hts acts with the parameters one update behind the learner's, by construction; "
                        "sync with the learner's own"}


# ------------------------------------------------------------------------------------------ Sample Factory

def sf_make_env(full_env_name: str, cfg: Any = None, env_config: Any = None, render_mode: Any = None) -> Any:
    import gymnasium as gym

    if full_env_name == "vs_async_latency_cartpole":
        return latency_cartpole(cfg.vs_async_latency_ms)
    if full_env_name == "vs_async_football":
        return football()
    import ale_py  # noqa: F401  (registers the ALE/ ids)
    from sample_factory.envs.env_wrappers import FireResetEnv, NumpyObsWrapper

    env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.25)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True)
    return NumpyObsWrapper(gym.wrappers.FrameStack(FireResetEnv(env), 4))  # LazyFrames to arrays


def run_sf(args: argparse.Namespace) -> dict[str, Any]:
    from sample_factory.algo.runners.runner import Runner
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
    from sample_factory.envs.env_utils import register_env
    from sample_factory.train import run_rl

    if args.seconds:  # SF 2.1.1 never advances the clock that --train_for_seconds reads: stop it here
        should_end = Runner._should_end_training
        Runner._should_end_training = lambda self: should_end(self) or time.time() - START >= args.seconds
    env_name = MLP_TASK_ENVS.get(args.task, "vs_async_pong")
    register_env(env_name, sf_make_env)
    p = PPO_SETTINGS[args.task]
    per_worker = args.num_envs // args.workers
    sgd_steps = p["epochs"] * p["minibatches"]
    argv = [
        "--algo=APPO", f"--env={env_name}", "--experiment=run", f"--train_dir={args.logdir}",
        "--async_rl=True", "--device=cpu", "--serial_mode=False", "--restart_behavior=overwrite",
        f"--num_workers={args.workers}", f"--num_envs_per_worker={per_worker}",
        f"--worker_num_splits={2 if per_worker % 2 == 0 else 1}", "--batched_sampling=False",
        "--decorrelate_envs_on_one_worker=False", f"--seed={args.seed}",
        # one training iteration is one htsrl-aio update: rollout x num_envs steps, epochs x minibatches
        f"--rollout={p['rollout']}", f"--batch_size={args.num_envs * p['rollout'] // p['minibatches']}",
        f"--num_batches_per_epoch={p['minibatches']}", f"--num_epochs={p['epochs']}",
        f"--learning_rate={p['lr']}", "--lr_schedule=constant", "--adam_eps=1e-5",
        f"--ppo_clip_ratio={p['clip']}", f"--exploration_loss_coeff={p['ent']}", f"--gamma={p['gamma']}",
        f"--gae_lambda={p['lam']}", f"--value_loss_coeff={p['vf']}", f"--max_grad_norm={p['max_grad_norm']}",
        "--with_vtrace=False", "--normalize_input=False", "--normalize_returns=False", "--use_rnn=False",
        "--reward_scale=1.0", "--summaries_use_frameskip=False", "--stats_avg=100",
        "--experiment_summaries_interval=2", "--save_every_sec=100000", "--save_best_every_sec=100000",
        "--with_wandb=False", f"--train_for_env_steps={args.steps or 10**12}",
    ]
    if args.task == "pong":
        argv += ["--encoder_conv_architecture=convnet_atari", "--obs_scale=255.0", "--nonlinearity=relu"]
    else:
        argv += ["--encoder_mlp_layers", *map(str, HIDDEN), "--nonlinearity=tanh"]
    parser, _ = parse_sf_args(argv)
    parser.add_argument("--vs_async_latency_ms", type=float, default=5.0)
    cfg = parse_full_cfg(parser, [*argv, f"--vs_async_latency_ms={args.latency_ms}"])
    status = run_rl(cfg)
    if status != 0:
        raise SystemExit(f"Sample Factory ended with status {status}")
    lag = sf_rows(args.logdir, sgd_steps)
    out: dict[str, Any] = {
        "policy_lag_sgd_steps": lag, "sgd_steps_per_update": sgd_steps,
        "lag_note": "Sample Factory counts lag in SGD steps (one per minibatch): divided by epochs x "
                    f"minibatches = {sgd_steps} it is in updates, as htsrl-aio's"}
    if lag:
        out["policy_lag_updates"] = {k: v / sgd_steps for k, v in lag.items()}
    if args.steps:
        import torch

        checkpoints = sorted((args.logdir / "run" / "checkpoint_p0").glob("checkpoint_*.pth"))
        out["final_params_sha256"] = state_sha256(torch.load(checkpoints[-1], map_location="cpu")["model"])
    return out


def sf_rows(logdir: Path, sgd_steps: int) -> dict[str, float]:
    """metrics.jsonl from Sample Factory's TensorBoard events; the mean policy lag over the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "run" / ".summary" / "0"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    returns = {e.step: e.value for e in events.Scalars("reward/reward")} if "reward/reward" in tags else {}
    # Every summary carries the env steps it was written at; a short run may have no perf/_fps yet.
    points = sorted({(e.wall_time, e.step) for tag in ("perf/_fps", "train/loss") if tag in tags
                     for e in events.Scalars(tag)})
    with open(logdir / "metrics.jsonl", "w") as file:
        for wall, step in points:
            file.write(json.dumps({"global_step": step, "wall_time_s": wall - START,
                                   "episode_return_mean": returns.get(step)}) + "\n")
    lag = {}
    for key in ("min", "avg", "max"):
        tag = f"train/version_diff_{key}"
        if tag in tags:
            values = [e.value for e in events.Scalars(tag)]
            lag[key] = (min if key == "min" else max if key == "max" else _mean)(values)
    return lag


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------------- RLlib

def rllib_pong(env_config: Any) -> Any:
    """Pong as RLlib's env runners make it: they are processes of their own, so ALE registers here."""
    import ale_py
    import gymnasium as gym
    from ray.rllib.env.wrappers.atari_wrappers import wrap_atari_for_new_api_stack

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.25)
    return wrap_atari_for_new_api_stack(env, dim=84, framestack=4)


def run_rllib(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    p = PPO_SETTINGS[args.task]
    if args.task == "pong":
        register_env("vs_async", rllib_pong)
        model = DefaultModelConfig(conv_filters=[[32, 8, 4], [64, 4, 2], [64, 3, 1]],
                                   head_fcnet_hiddens=[512], conv_activation="relu", vf_share_layers=True)
    else:
        register_env("vs_async", (lambda cfg: football()) if args.task == "football"
                     else (lambda cfg: latency_cartpole(args.latency_ms)))
        model = DefaultModelConfig(fcnet_hiddens=list(HIDDEN), fcnet_activation="tanh")
    ray.init(num_cpus=max(args.workers + 1, 2), include_dashboard=False, log_to_driver=False)
    config = (
        APPOConfig()
        .environment("vs_async")
        .env_runners(num_env_runners=args.workers, num_envs_per_env_runner=args.num_envs // args.workers,
                     rollout_fragment_length=p["rollout"])
        .learners(num_learners=0)
        .training(lr=p["lr"], gamma=p["gamma"], lambda_=p["lam"], clip_param=p["clip"],
                  entropy_coeff=p["ent"], vf_loss_coeff=p["vf"], grad_clip=p["max_grad_norm"],
                  # APPO reuses data through its circular buffer: each train batch (one PPO minibatch
                  # here) is trained on up to `epochs` times, as each minibatch is in PPO's epochs
                  train_batch_size_per_learner=args.num_envs * p["rollout"] // p["minibatches"],
                  circular_buffer_num_batches=p["minibatches"],
                  circular_buffer_iterations_per_batch=p["epochs"])
        .rl_module(model_config=model)
        .debugging(seed=args.seed)
    )
    algo = config.build_algo()
    steps = 0
    with open(args.logdir / "metrics.jsonl", "w", buffering=1) as file:
        while True:
            result = algo.train()
            steps = result["num_env_steps_sampled_lifetime"]
            write_row(file, steps, result["env_runners"].get("episode_return_mean"))
            if (args.seconds and time.time() - START >= args.seconds) or (args.steps and steps >= args.steps):
                break
    out: dict[str, Any] = {
        "lag_note": "RLlib APPO: env runners sample asynchronously with the weights last broadcast "
                    f"to them (broadcast_interval={config.broadcast_interval} training step); the learner "
                    f"trains each batch up to {config.circular_buffer_iterations_per_batch} times from a "
                    f"circular buffer of {config.circular_buffer_num_batches} batches, against a target "
                    f"network refreshed every {config.target_network_update_freq} x N x K samples; so "
                    "samples are up to about one "
                    "buffer of updates old, and RLlib logs no per-sample lag"}
    if args.steps:
        module = algo.get_module()
        out["final_params_sha256"] = state_sha256(module.state_dict())
    algo.stop()
    ray.shutdown()
    return out


RUNNERS = {"hts": run_htsrl, "sync": run_htsrl, "sf": run_sf, "rllib": run_rllib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("learner", choices=list(RUNNERS))
    parser.add_argument("--task", choices=list(PPO_SETTINGS), required=True)
    parser.add_argument("--logdir", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=None, help="wall-clock budget from process start")
    parser.add_argument("--steps", type=int, default=None, help="env-step budget instead (reproducibility)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2,
                        help="env processes (SF workers, RLlib env runners)")
    parser.add_argument("--latency-ms", type=float, default=5.0)
    args = parser.parse_args()
    if (args.seconds is None) == (args.steps is None):
        parser.error("give exactly one of --seconds and --steps")
    if args.num_envs % args.workers:
        parser.error(f"--num-envs {args.num_envs} must be a multiple of --workers {args.workers}")
    args.logdir.mkdir(parents=True, exist_ok=True)
    summary = {"learner": args.learner, **RUNNERS[args.learner](args)}
    rows = [json.loads(line) for line in (args.logdir / "metrics.jsonl").read_text().splitlines()]
    summary.update(steps=rows[-1]["global_step"] if rows else 0, wall_time_s=time.time() - START)
    (args.logdir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
