"""Every kind of space trains, bit for bit the same whatever the workers, batching, backend or timing,
and resumes exactly with its running normalisation statistics."""

import functools
from pathlib import Path

import numpy as np
import pytest
from harness import actions_trace, as_if_crashed_after, same_bits_in_every_placement

from htsrl_aio import TrainConfig, Trainer, resume, train
from htsrl_aio.checkpoint import load
from htsrl_aio.evaluate import evaluate

NUM_ENVS, ROLLOUT, UPDATES = 4, 16, 4
KINDS = {
    # Envs from real packages: Box actions (normalised), and a Dict with an image, a Discrete and text.
    "pendulum": {"env": "Pendulum-v1", "normalize_obs": True, "normalize_reward": True},
    "minigrid": {"env": "MiniGrid-Empty-5x5-v0"},
    # The tests' own, with random step delays: Tuple observations with a CNN-sized image.
    "multi_discrete": {"env": "envs_for_tests:ManySpacesEnv", "env_kwargs": {"actions": "multi_discrete"}},
    "multi_binary": {"env": "envs_for_tests:ManySpacesEnv", "env_kwargs": {"actions": "multi_binary"}},
    "box": {"env": "envs_for_tests:ManySpacesEnv", "env_kwargs": {"actions": "box"}, "normalize_obs": True},
}


def config(run_dir: Path, kind: str, **overrides) -> TrainConfig:
    base = {"num_envs": NUM_ENVS, "rollout": ROLLOUT, "total_steps": NUM_ENVS * ROLLOUT * UPDATES,
            "minibatches": 2, "logdir": str(run_dir), "progress": False, **KINDS[kind]}
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_same_bits_across_workers_batching_and_backends(tmp_path, no_leaks, kind):
    same_bits_in_every_placement(functools.partial(config, kind=kind), tmp_path, UPDATES)


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
class TestOnRayActors:
    @pytest.mark.slow
    @pytest.mark.parametrize("kind", list(KINDS))
    def test_same_bits_as_the_event_loop(self, tmp_path, no_leaks, kind):
        """Observations of every kind travel back from the actors to the slots their tickets name."""
        runs = {name: train(config(tmp_path / name, kind, **overrides)) for name, overrides in [
            ("event_loop", {"env_backend": "loop", "env_timeout": 0, "learner": "thread"}),
            ("ray_actors", {"env_backend": "ray", "ray_actors": 3, "learner": "thread"}),
        ]}
        assert runs["event_loop"]["final_params_sha256"] == runs["ray_actors"]["final_params_sha256"]
        assert actions_trace(tmp_path / "event_loop") == actions_trace(tmp_path / "ray_actors")


@pytest.mark.slow
def test_resume_restores_normalisation_statistics_exactly(tmp_path, no_leaks):
    overrides = {"normalize_reward": True, "workers": 2, "checkpoint_every": 2,
                 "total_steps": NUM_ENVS * ROLLOUT * 5}
    full = train(config(tmp_path / "full", "box", **overrides))
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    resumed = resume(crashed / "checkpoints" / "update-0000004.pt", workers=1)
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert actions_trace(crashed) == actions_trace(tmp_path / "full")
    # ...and the statistics are part of what resumed: a run without them ends elsewhere.
    plain = train(config(tmp_path / "plain", "box", **{**overrides, "normalize_reward": False}))
    assert plain["final_params_sha256"] != full["final_params_sha256"]


async def test_act_and_eval_speak_the_envs_action_space(tmp_path, no_leaks):
    obs = np.zeros(3, np.float32)
    async with Trainer(config(tmp_path / "run", "pendulum", workers=1)) as trainer:
        async for _ in trainer.updates():
            action = await trainer.act(obs)
            assert action.shape == (1,) and action.dtype == np.float32 and -2.0 <= action[0] <= 2.0
            mode = await trainer.act(obs, deterministic=True)
            assert np.array_equal(mode, await trainer.act(obs, deterministic=True))
    first = await evaluate(tmp_path / "run", episodes=2, deterministic=True)
    assert first.returns == (await evaluate(tmp_path / "run", episodes=2, deterministic=True)).returns
    # The normalisation statistics travel with the parameters that eval loads.
    assert load(tmp_path / "run" / "checkpoint.pt")["model"]["encoder.stats.obs.count"] > NUM_ENVS * ROLLOUT
