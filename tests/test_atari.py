"""Atari end to end: the C++-preprocessed adapter, the Nature CNN, the presets, determinism."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from htsrl_aio import ConfigError, TrainConfig, train
from htsrl_aio.backends.replica import EpisodeTracker
from htsrl_aio.cli import main as cli_main
from htsrl_aio.envs import EnvSpec, resolve_env
from htsrl_aio.envs.atari import AleSpec, AtariOptions, PreprocessedAtariEnv
from htsrl_aio.envs.engines import OneEngineEnv
from htsrl_aio.models import build_model
from htsrl_aio.models.cnn import NatureCNN
from htsrl_aio.presets import PRESETS


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def random_game(env: PreprocessedAtariEnv, seed: int, actions_seed: int = 0) -> list[tuple]:
    """(obs, reward, terminated, truncated, info) of every step of one whole game, random actions."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(actions_seed)
    steps = [(obs, 0.0, False, False, {})]
    while True:
        step = env.step(int(rng.integers(env.action_space.n)))
        steps.append(step)
        if (step[2] and step[4].get("game_over", True)) or step[3]:
            return steps


def test_adapter_gives_stacked_uint8_frames_and_replays_a_seed_exactly():
    env = PreprocessedAtariEnv("ALE/Breakout-v5")
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    first = random_game(env, seed=7)
    # A reset right after an episode end must replay like a fresh env: ALE's own autoreset never runs.
    second = random_game(env, seed=7)
    fresh = random_game(PreprocessedAtariEnv("ALE/Breakout-v5"), seed=7)
    other = random_game(env, seed=8)
    assert first[0][0].dtype == np.uint8 and first[0][0].shape == (4, 84, 84)
    for a, b in ((first, second), (first, fresh)):
        assert len(a) == len(b) and all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    assert len(other) != len(first) or not all(np.array_equal(x[0], y[0]) for x, y in zip(first, other))


def test_clipped_rewards_are_trained_and_whole_game_raw_returns_are_logged():
    """Space Invaders scores 5-30 per alien; with episodic life a lost life ends only the training episode."""
    env = PreprocessedAtariEnv("ALE/SpaceInvaders-v5", AtariOptions(episodic_life=True))
    tracker = EpisodeTracker(0, run_seed=1)
    game = random_game(env, seed=tracker.next_reset_seed())
    outcomes = [tracker.on_step(step)[0] for step in game[1:]]
    raw = [info["raw_reward"] for _, _, _, _, info in game[1:]]
    trained = [outcome.reward for outcome in outcomes]
    assert max(raw) > 1 and trained == [float(np.sign(r)) for r in raw]
    lives_lost = [o.terminated for o in outcomes[:-1]]
    assert sum(lives_lost) >= 1  # terminations that cut bootstrapping, without ending the game
    episodes = [o.episode for o in outcomes if o.episode is not None]
    assert episodes == [(sum(raw), len(raw))]  # one logged episode: the whole game, in game points


@pytest.mark.slow
@pytest.mark.parametrize("mode,preset,learner",
                         [("hts", "atari-ppo", "process"), ("sync", "atari-a2c", "thread")])
def test_pong_smoke_run_with_the_presets(run_dir, no_leaks, mode, preset, learner):
    num_envs, rollout = 4, (16 if preset == "atari-ppo" else 5)
    summary = train(TrainConfig(env="ALE/Pong-v5", preset=preset, mode=mode, num_envs=num_envs,
                                rollout=rollout, total_steps=num_envs * rollout * 3, workers=1,
                                learner=learner, logdir=str(run_dir), progress=False))
    rows = read_metrics(run_dir)
    assert [r["policy_lag"] for r in rows] == ([0, 1, 1] if mode == "hts" else [0, 0, 0])
    assert summary["global_step"] == num_envs * rollout * 3
    config = json.loads((run_dir / "config.json").read_text())
    # Explicit flags win over the preset; the rest comes from it.
    assert (config["num_envs"], config["rollout"]) == (num_envs, rollout)
    expected = {k: v for k, v in PRESETS[preset].values.items() if k not in ("num_envs", "rollout")}
    assert {k: config[k] for k in expected} == expected
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["model"]["encoder.cnns.obs.trunk.0.weight"].shape == (32, 4, 8, 8)  # the Nature CNN


@pytest.mark.slow
def test_atari_runs_are_bit_identical_across_worker_counts(tmp_path, no_leaks):
    """Breakout with episodic life: lost lives, game overs and seeded resets all happen in 3 updates.

    The second run also moves the learner from its own process to a thread; bf16 autocast (the
    preset's) stays bit-identical through all of it.
    """
    runs = []
    for workers, max_batch, learner in ((1, 2, "process"), (2, 1, "thread")):
        run = tmp_path / f"w{workers}"
        summary = train(TrainConfig(env="ALE/Breakout-v5", preset="atari-ppo", num_envs=2, rollout=128,
                                    total_steps=2 * 128 * 3, workers=workers, max_batch=max_batch,
                                    learner=learner,
                                    atari_episodic_life=True, logdir=str(run), progress=False))
        runs.append((summary, read_metrics(run)))
    (a, rows_a), (b, rows_b) = runs
    assert a["final_params_sha256"] == b["final_params_sha256"]
    assert [r["actions_sha256"] for r in rows_a] == [r["actions_sha256"] for r in rows_b]
    assert a["episodes"] == b["episodes"] >= 1
    # Whole games are logged (a Breakout game is 5 lives, about 50 steps each), not single lives.
    assert rows_a[-1]["episode_length_mean"] == rows_b[-1]["episode_length_mean"] > 100


def test_cnn_on_vector_observations_is_one_sentence_before_any_process(tmp_path, capsys, no_leaks):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--env", "CartPole-v1", "--model", "cnn", "--logdir", str(tmp_path / "r"),
                  "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("htsrl-aio: error: --model cnn needs an image observation")
    assert "this env's images: none" in err[0]


def _uses_cnn(spec: EnvSpec, cfg: TrainConfig) -> bool:
    return any(isinstance(m, NatureCNN) for m in build_model(spec, cfg).modules())


def test_cnn_needs_images_and_auto_picks_by_observation_shape():
    vector = EnvSpec.from_spaces(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    atari = EnvSpec.from_spaces(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6))
    with pytest.raises(ConfigError, match=r"^--model cnn needs an image observation"):
        build_model(vector, TrainConfig(model="cnn").resolved())
    auto = TrainConfig().resolved()
    assert _uses_cnn(atari, auto) and not _uses_cnn(vector, auto)
    # --model mlp flattens images rather than refusing them.
    assert not _uses_cnn(atari, TrainConfig(model="mlp").resolved())


def test_atari_flags_reach_the_env():
    factory = resolve_env("ALE/Breakout-v5", TrainConfig(atari_sticky=0.0, atari_episodic_life=True,
                                                         atari_fire_reset=False, atari_noop_max=0))
    assert factory.engine == AleSpec("ALE/Breakout-v5", AtariOptions(sticky=0.0, episodic_life=True,
                                                                      fire_reset=False, noop_max=0))
    env = factory()
    assert isinstance(env, OneEngineEnv) and env.spec_ == factory.engine


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cnn_rows_do_not_depend_on_the_other_rows_of_a_block(precision):
    """What deterministic inference relies on: in a fixed-shape block, a row's outputs are its own."""
    torch.manual_seed(0)
    spec = EnvSpec.from_spaces(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6))
    model = build_model(spec, TrainConfig(precision=precision).resolved()).eval()
    rng = np.random.default_rng(0)
    block = torch.from_numpy(rng.integers(0, 256, (8, 4, 84, 84), dtype=np.uint8))
    other = block.clone()
    other[1:] = torch.from_numpy(rng.integers(0, 256, (7, 4, 84, 84), dtype=np.uint8))
    with torch.no_grad():
        (logits_a, value_a), (logits_b, value_b) = model({"obs": block}), model({"obs": other})
    assert logits_a.dtype == torch.float32
    assert torch.equal(logits_a[0], logits_b[0]) and torch.equal(value_a[0], value_b[0])


def _engine_paths(factory):
    """The env of each path an ALE id runs on: one env (process and loop backends, probe, check-env,
    eval) and a group of the engine backend, built from the same recipe."""
    one = factory()
    group = factory.engine.build(2, 1, [1, 2])
    return [(one.observation_space, one.action_space, one.reset(seed=1)[0]),
            (group.observation_space, group.action_space, group.reset([0, 1], [1, 2])[0])]


@pytest.mark.parametrize("flags,shape,actions", [
    ({"frame_size": (64, 48), "frame_stack": 2, "grayscale": True}, (2, 64, 48), 4),
    ({"frame_stack": 1}, (1, 84, 84), 4),
    ({"env_kwargs": {"full_action_space": True, "frameskip": 2, "repeat_action_probability": 0.0}},
     (4, 84, 84), 18),
])
def test_ale_flags_reach_the_engine_on_every_env_path(flags, shape, actions):
    factory = resolve_env("ALE/Breakout-v5", TrainConfig(**flags))
    for space, action_space, obs in _engine_paths(factory):
        assert space.shape == shape and obs.shape == shape and action_space.n == actions


def test_ale_engine_kwargs_change_the_game():
    """frameskip=1 moves the game a quarter as far per step as the default 4."""
    def frames_after(**kwargs):
        config = TrainConfig(env_kwargs=kwargs, frame_stack=1, atari_noop_max=0)
        env = resolve_env("ALE/Breakout-v5", config)()
        env.reset(seed=0)
        return [env.step(1)[0] for _ in range(8)][-1]
    assert not np.array_equal(frames_after(), frames_after(frameskip=1))


@pytest.mark.parametrize("kwargs", [{"obs_type": "ram"}, {"obs_type": "rgb"}, {"mode": 1}, {"difficulty": 1},
                                    {"continuous": True}, {"frameskip": [2, 5]}, {"render_mode": "human"}])
def test_ale_options_the_engine_cannot_apply_are_one_sentence(kwargs):
    key = next(iter(kwargs))
    sentence = (rf"^--env-kwargs {key}=.* cannot be applied to ALE/Breakout-v5: .*; use gymnasium's own ALE "
                rf"env in worker processes instead: --env ale_py:ALE/Breakout-v5 --env-kwargs {key}=")
    with pytest.raises(ConfigError, match=sentence):
        resolve_env("ALE/Breakout-v5", TrainConfig(env_kwargs=kwargs))


def test_sticky_given_twice_is_one_sentence():
    with pytest.raises(ConfigError, match=r"^--atari-sticky and --env-kwargs repeat_action_probability"):
        resolve_env("ALE/Breakout-v5", TrainConfig(atari_sticky=0.0,
                                                   env_kwargs={"repeat_action_probability": 0.1}))


def test_check_env_reports_ram_as_refused_and_gymnasiums_ale_env_as_ram(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check-env", "ALE/Breakout-v5", "--env-kwargs", "obs_type=ram"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--env ale_py:ALE/Breakout-v5 --env-kwargs obs_type=ram" in err[0]
    ram = ["check-env", "ale_py:ALE/Breakout-v5", "--env-kwargs", "obs_type=ram", "--steps", "5"]
    assert cli_main(ram) == 0
    assert "observations (128,) uint8, 4 actions; runs in worker processes" in capsys.readouterr().out
    assert cli_main(["check-env", "ALE/Breakout-v5", "--frame-size", "64", "48", "--steps", "5"]) == 0
    assert "observations (4, 64, 48) uint8" in capsys.readouterr().out


def test_a_run_stored_with_the_old_frame_stack_default_resumes_with_the_engines_own_stack():
    """frame_stack's default was 1 (the env's own stack: 4 on ALE ids) before explicit 1 meant 1."""
    stored = {**TrainConfig(env="ALE/Pong-v5").resolved().to_json_dict(), "frame_stack": 1}
    old = TrainConfig.for_resume(stored, {"env": "ALE/Pong-v5"}, {}, "checkpoint.pt")
    assert resolve_env(old.env, old).engine.stack == 4
    explicit = TrainConfig.for_resume(stored, {"env": "ALE/Pong-v5", "frame_stack": 1}, {}, "checkpoint.pt")
    assert resolve_env(explicit.env, explicit).engine.stack == 1
