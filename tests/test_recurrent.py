"""Policies with memory (--memory lstm|gru): the same bits whatever the workers, batching, backend or
timing; exact resume with the recurrent states; the learner replays what inference computed; and a
task only memory can solve is solved with it."""

import functools
import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import actions_trace, as_if_crashed_after, same_bits_in_every_placement, signalled

from htsrl_aio import ConfigError, TrainConfig, Trainer, resume, train
from htsrl_aio.algos import Sequences
from htsrl_aio.cli import main as cli_main
from htsrl_aio.distributions import make_distribution
from htsrl_aio.evaluate import evaluate
from htsrl_aio.models import build_model
from htsrl_aio.models.recurrent import RecurrentCore
from htsrl_aio.runtime.storage import RolloutStorage, storage_layout

NUM_ENVS, ROLLOUT, UPDATES = 4, 16, 4
KINDS = {
    # The tests' own, with random step delays and episodes of 9-15 steps (resets inside rollouts):
    # Tuple observations with a CNN-sized image, and MultiDiscrete or Box actions.
    "multi_discrete": {"env": "envs_for_tests:ManySpacesEnv", "env_kwargs": {"actions": "multi_discrete"}},
    "box": {"env": "envs_for_tests:ManySpacesEnv", "env_kwargs": {"actions": "box"}, "normalize_obs": True},
    # A Box observation from a real package, with a 20-step time limit: truncations are bootstrapped
    # with the recurrent state of their step.
    "pendulum": {"env": "Pendulum-v1", "env_kwargs": {"max_episode_steps": 20}},
}


def config(run_dir: Path, kind: str, memory: str, **overrides) -> TrainConfig:
    base = {"num_envs": NUM_ENVS, "rollout": ROLLOUT, "total_steps": NUM_ENVS * ROLLOUT * UPDATES,
            "minibatches": 2, "memory": memory, "memory_size": 16, "hidden": (16,), "logdir": str(run_dir),
            "progress": False, "tensorboard": False, **KINDS[kind]}
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("kind,memory", [("multi_discrete", "lstm"), ("box", "gru"), ("pendulum", "lstm")])
def test_same_bits_across_workers_batching_and_backends(tmp_path, no_leaks, kind, memory):
    make = functools.partial(config, kind=kind, memory=memory)
    first = same_bits_in_every_placement(make, tmp_path, UPDATES)
    # ...and the memory is part of the policy: without it the same run acts otherwise.
    plain = train(config(tmp_path / "plain", kind, "none"))
    assert actions_trace(tmp_path / "plain") != actions_trace(tmp_path / "one_worker")
    assert plain["final_params_sha256"] != first["final_params_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("algo,mode", [("a2c", "hts"), ("ppo", "sync"), ("a2c", "sync")])
def test_same_bits_with_each_algorithm_and_mode(tmp_path, no_leaks, algo, mode):
    rollout = 8 if algo == "a2c" else ROLLOUT
    runs = [train(config(tmp_path / name, "multi_discrete", "gru", algo=algo, mode=mode, rollout=rollout,
                         total_steps=NUM_ENVS * rollout * UPDATES, **overrides))
            for name, overrides in [("a", {"workers": 1}), ("b", {"workers": 2, "max_batch": 1})]]
    assert runs[0]["final_params_sha256"] == runs[1]["final_params_sha256"]
    assert actions_trace(tmp_path / "a") == actions_trace(tmp_path / "b")


@pytest.mark.slow
def test_atari_engines_with_one_frame_and_an_lstm_give_the_bits_of_worker_processes(tmp_path, no_leaks):
    """Recurrent Atari as CleanRL's ppo_atari_lstm.py: one frame, the memory does the stacking."""
    base = dict(env="ALE/Breakout-v5", preset="atari-ppo", num_envs=4, rollout=32, total_steps=4 * 32 * 3,
                minibatches=4, atari_episodic_life=True, frame_stack=1, memory="lstm", memory_size=32,
                logdir=None, progress=False, tensorboard=False)
    runs = {}
    for name, overrides in [("process", {"env_backend": "process", "workers": 2}),
                            ("engine_b2t1", {"env_backend": "engine", "engine_batch": 2,
                                             "engine_threads": 1}),
                            ("engine_b4t2", {"env_backend": "engine", "engine_batch": 4, "engine_threads": 2,
                                             "max_batch": 3})]:
        runs[name] = train(TrainConfig(**{**base, **overrides, "logdir": str(tmp_path / name)}))
    assert len({summary["final_params_sha256"] for summary in runs.values()}) == 1
    traces = [actions_trace(tmp_path / name) for name in runs]
    assert traces[0] == traces[1] == traces[2]
    stored = torch.load(tmp_path / "process" / "checkpoint.pt", weights_only=True)
    assert stored["model"]["encoder.cnns.obs.trunk.0.weight"].shape[1] == 1  # one frame in, not four


def test_resume_from_a_periodic_checkpoint_continues_with_the_same_memory(tmp_path, no_leaks):
    overrides = {"workers": 2, "checkpoint_every": 2, "total_steps": NUM_ENVS * ROLLOUT * 5}
    full = train(config(tmp_path / "full", "multi_discrete", "lstm", **overrides))
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    stored = torch.load(crashed / "checkpoints" / "update-0000004.pt", weights_only=True)
    assert stored["rollout"]["memory"].abs().sum() > 0  # the states are in the checkpoint
    resumed = resume(crashed / "checkpoints" / "update-0000004.pt", workers=1)
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert actions_trace(crashed) == actions_trace(tmp_path / "full")


@pytest.mark.slow
def test_a_sigterm_then_resume_is_bit_identical(tmp_path):
    settings = {"env": "envs_for_tests:jitter_cartpole", "num_envs": 4, "rollout": 16,
                "total_steps": 4 * 16 * 40, "workers": 2, "checkpoint_every": 0, "memory": "gru",
                "memory_size": 16}
    full = train(TrainConfig(**settings, logdir=str(tmp_path / "full"), progress=False, tensorboard=False))
    run = tmp_path / "stopped"
    flags = [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]
    code, stderr = signalled([sys.executable, "-m", "htsrl_aio.cli", "train", *flags, "--logdir", str(run),
                              "--no-progress", "--no-tensorboard"], run, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr
    update = torch.load(run / "checkpoint.pt", weights_only=True)["update"]
    assert 0 < update < full["updates"], "the signal came too late"
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert actions_trace(run) == actions_trace(tmp_path / "full")




def test_the_learner_replays_the_log_probabilities_inference_stored(tmp_path, no_leaks):
    """Sync mode: the rollout held by the checkpoint of swap 1 was collected by the parameters that
    checkpoint holds, and replaying each env's sequence from its stored start state with them gives back
    the log-probabilities and values inference stored."""
    cfg = config(tmp_path / "run", "multi_discrete", "lstm", mode="sync", checkpoint_every=1, workers=1,
                 total_steps=NUM_ENVS * ROLLOUT * 2)
    train(cfg)
    stored = torch.load(tmp_path / "run" / "checkpoints" / "update-0000001.pt", weights_only=True)
    rollout = {name: tensor.numpy() for name, tensor in stored["rollout"].items()}
    storage = RolloutStorage(0, rollout)
    initial = build_model(_spec(cfg), cfg.resolved())
    initial.load_state_dict(stored["model"])
    sequences = Sequences.cut(torch.from_numpy(storage.memory), torch.from_numpy(storage.episode_starts),
                              ROLLOUT)
    obs = {key: sequences.order(torch.from_numpy(array[:-1])) for key, array in storage.obs.items()}
    with torch.no_grad():
        params, values = initial.unroll(obs, sequences.start_states, sequences.starts)
    distribution = make_distribution(_spec(cfg).action)
    actions = sequences.order(torch.from_numpy(storage.actions))
    logprobs = sequences.order(torch.from_numpy(storage.logprobs))
    assert storage.episode_starts[1:-1].any()  # episodes began inside the rollout: the states were reset
    torch.testing.assert_close(distribution.log_prob(params, actions), logprobs, rtol=0, atol=0)
    torch.testing.assert_close(values, sequences.order(torch.from_numpy(storage.values)), rtol=0, atol=0)


def _spec(cfg: TrainConfig):
    import asyncio

    from htsrl_aio.envs import probe_env, resolve_env
    resolved = cfg.resolved()
    return asyncio.run(probe_env(resolve_env(resolved.env, resolved), 60))[1]


@pytest.mark.slow
def test_a_cue_only_memory_can_hold_is_learned_with_an_lstm_and_not_without(tmp_path, no_leaks):
    runs = {memory: train(TrainConfig(env="envs_for_tests:CueEnv", memory=memory, memory_size=32,
                                      num_envs=8, rollout=32, total_steps=40_000,
                                      logdir=str(tmp_path / memory),
                                      progress=False, tensorboard=False))
            for memory in ("lstm", "none")}
    assert runs["lstm"]["episode_return_mean"] > 0.8, runs["lstm"]
    assert runs["none"]["episode_return_mean"] < 0.4, runs["none"]


@pytest.mark.parametrize("overrides,message", [
    ({"bptt": 5}, "--bptt 5 does not divide --rollout 16"),
    ({"minibatches": 3}, "--minibatches 3 does not divide"),
    ({"memory": "none", "bptt": 4}, "--bptt applies to policies with memory"),
])
def test_bad_memory_settings_are_one_sentence(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, "box", **{"memory": "lstm", **overrides}).resolved()


async def test_act_carries_the_memory_of_each_env(tmp_path, no_leaks):
    cfg = TrainConfig(env="envs_for_tests:CueEnv", memory="gru", memory_size=8, num_envs=2, rollout=8,
                      minibatches=2, total_steps=16, logdir=str(tmp_path / "run"), progress=False,
                      tensorboard=False)
    async with Trainer(cfg) as trainer:
        with pytest.raises(ValueError, match=r"pass memory=trainer\.new_memory\(\)"):
            await trainer.act(np.zeros(2, np.float32))
        memory = trainer.new_memory()
        await trainer.act(np.array([1, 0], np.float32), deterministic=True, memory=memory)
        after_cue = memory.state.copy()
        assert np.abs(after_cue).sum() > 0
        await trainer.act(np.zeros(2, np.float32), deterministic=True, memory=memory)
        assert not np.array_equal(memory.state, after_cue)
        memory.reset()
        assert not memory.state.any() and memory.start.all()
        await trainer.run()
    # eval plays the trained policy with its memory (episodes of the cue env last delay + 1 = 4 steps)
    result = await evaluate(tmp_path / "run", episodes=3, deterministic=True)
    assert result.lengths == [4, 4, 4] and all(r in (-1.0, 1.0) for r in result.returns)


def test_storage_layout_holds_the_states_only_with_memory():
    layout = storage_layout(2, 4, {"obs": ((3,), np.dtype(np.float32))}, (), np.dtype(np.int64), state_size=6)
    assert layout["memory"][0] == (5, 2, 6) and layout["episode_starts"][0] == (5, 2)
    assert "memory" not in storage_layout(2, 4, {"obs": ((3,), np.dtype(np.float32))}, (), np.dtype(np.int64))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_replaying_sequences_gives_the_bits_of_one_step_at_a_time(kind):
    """The learner's unroll (one fused call per stretch without episode starts) against inference's
    single steps in padded blocks of 8 rows."""
    torch.manual_seed(0)
    core = RecurrentCore(kind, 3, 8)
    x, state = torch.randn(12, 5, 3), torch.randn(5, core.state_size)
    starts = torch.rand(12, 5) < 0.15
    starts[4, 2] = True
    with torch.no_grad():
        replayed = core.unroll(x, state, starts)
        outputs, current = [], state
        for t in range(12):
            block_x, block_state = torch.zeros(8, 3), torch.zeros(8, core.state_size)
            block_x[:5], block_state[:5] = x[t], current
            block_start = torch.ones(8, dtype=torch.bool)
            block_start[:5] = starts[t]
            out, next_state = core.step(block_x, block_state, block_start)
            outputs.append(out[:5])
            current = next_state[:5]
    assert torch.equal(torch.stack(outputs), replayed)
    # ...and a reset matters: without the flags the outputs differ after the first start.
    with torch.no_grad():
        assert not torch.equal(core.unroll(x, state, torch.zeros_like(starts)), replayed)


def test_no_velocity_envs_show_positions_only_and_the_preset_brings_memory():
    import gymnasium as gym

    import htsrl_aio.envs.pomdp  # noqa: F401 (registers the ids)

    hidden, full = gym.make("CartPoleNoVel-v1"), gym.make("CartPole-v1")
    obs, _ = hidden.reset(seed=3)
    full_obs, _ = full.reset(seed=3)
    assert obs.shape == (2,) and np.array_equal(obs, full_obs[[0, 2]])
    cfg = TrainConfig(env="htsrl_aio.envs.pomdp:CartPoleNoVel-v1", preset="pomdp-ppo").resolved()
    assert (cfg.memory, cfg.memory_size, cfg.minibatches, cfg.epochs) == ("lstm", 64, 1, 4)
    assert cfg.ppo_trust_region == "behaviour"
    assert TrainConfig(env="htsrl_aio.envs.pomdp:CartPoleNoVel-v1", preset="pomdp-ppo",
                       ppo_trust_region="current").resolved().ppo_trust_region == "current"
    assert (TrainConfig().resolved().memory, TrainConfig().resolved().ppo_trust_region) == ("none", "current")
    atari = TrainConfig(env="ALE/Pong-v5", preset="atari-lstm").resolved()
    assert (atari.memory, atari.frame_stack, atari.rollout) == ("lstm", 1, 128)


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
def test_on_ray_actors_the_same_bits_as_the_event_loop(tmp_path, no_leaks):
    """The states never leave the head: envs on Ray actors change nothing."""
    runs = {name: train(config(tmp_path / name, "multi_discrete", "lstm", learner="thread", **overrides))
            for name, overrides in [("event_loop", {"env_backend": "loop", "env_timeout": 0}),
                                    ("ray_actors", {"env_backend": "ray", "ray_actors": 3})]}
    assert runs["event_loop"]["final_params_sha256"] == runs["ray_actors"]["final_params_sha256"]
    assert actions_trace(tmp_path / "event_loop") == actions_trace(tmp_path / "ray_actors")
