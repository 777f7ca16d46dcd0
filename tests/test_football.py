"""Google Research Football: ids, preset, seeding, and short runs in both modes (needs gfootball)."""

import builtins
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from harness import as_if_crashed_after

from htsrl_aio import ConfigError, TrainConfig, resume, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.envs import resolve_env
from htsrl_aio.envs.football import (
    ACADEMY_SCENARIOS,
    LEFT_TEAM_SIZES,
    FootballEnv,
    FootballSpec,
    FootballTeam,
    parse_football_id,
    require_gfootball,
)

HAVE_GFOOTBALL = importlib.util.find_spec("gfootball") is not None
needs_gfootball = pytest.mark.skipif(
    not HAVE_GFOOTBALL, reason="gfootball is not installed: run scripts/install-football.sh")


# --- always run: ids, errors, preset -------------------------------------------------------------

@pytest.mark.parametrize("options,spec", [
    ({}, FootballSpec("academy_empty_goal_close")),
    ({"football_representation": "extracted"}, FootballSpec("academy_empty_goal_close", "extracted")),
    ({"football_representation": "extracted", "football_rewards": "scoring,checkpoints"},
     FootballSpec("academy_empty_goal_close", "extracted", "scoring,checkpoints")),
])
def test_flags_choose_representation_and_rewards(options, spec):
    cfg = TrainConfig(env="gfootball/academy_empty_goal_close", **options).resolved()
    if HAVE_GFOOTBALL:
        assert resolve_env(cfg.env, cfg).football == spec
    assert parse_football_id(cfg.env, cfg.football_representation, cfg.football_rewards) == spec


def test_all_eleven_academy_scenarios_are_known():
    assert len(ACADEMY_SCENARIOS) == 11
    if HAVE_GFOOTBALL:  # and each one exists in the installed gfootball
        import gfootball.scenarios as scenarios

        folder = Path(scenarios.__file__).parent
        assert all((folder / f"{name}.py").exists() for name in ACADEMY_SCENARIOS)


@pytest.mark.parametrize("env_id,options,message", [
    ("gfootball/academy_empty_goal_clos", {}, r"unknown gfootball scenario .*did you mean "
                                              r"gfootball/academy_empty_goal_close\?"),
    ("gfootball/academy_corner/extracted", {}, r"a gfootball id is gfootball/<scenario>; choose the "
                                               r"representation and rewards with --football-representation"),
    ("gfootball/academy_corner", {"football_representation": "pixels"},
     r"unknown --football-representation 'pixels'; choose 'simple115v2' or 'extracted'\."),
    ("gfootball/academy_empty_goal_close", {"football_players": 3},
     r"--football-players 3 is more than the 2 players of academy_empty_goal_close's left team \(its "
     r"goalkeeper included\); choose at most 2\."),
    ("CartPole-v1", {"football_players": 3},
     r"--football-players controls several players of a gfootball/<scenario> game, and 'CartPole-v1' is "
     r"not one"),
])
def test_a_bad_id_or_option_is_one_sentence(run_dir, env_id, options, message):
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig(env=env_id, logdir=str(run_dir), **options))


@needs_gfootball
def test_the_left_team_sizes_are_the_engines():
    import gfootball.env as football_env

    for scenario, size in LEFT_TEAM_SIZES.items():
        env = football_env.create_environment(env_name=scenario, render=False, logdir="")
        try:
            env.reset()
            assert len(env.unwrapped._config._scenario_cfg.left_team) == size, scenario
        finally:
            env.close()


def test_cli_offers_the_options_as_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--football-rewards", "checkpoints"])
    assert "invalid choice: 'checkpoints' (choose from 'scoring', 'scoring,checkpoints')" in \
        capsys.readouterr().err


def test_missing_gfootball_names_the_install_script(monkeypatch):
    real_import = builtins.__import__

    def no_gfootball(name, *args, **kwargs):
        if name.startswith("gfootball"):
            raise ModuleNotFoundError("No module named 'gfootball'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gfootball)
    with pytest.raises(ConfigError, match=r"^--env gfootball/\.\.\. needs Google Research Football, .*"
                                          r"scripts/install-football\.sh") as info:
        require_gfootball()
    assert "\n" not in str(info.value)


def test_football_preset_has_the_papers_ppo_hyperparameters():
    cfg = TrainConfig(env="gfootball/academy_empty_goal_close", preset="football-ppo").resolved()
    assert (cfg.algo, cfg.num_envs, cfg.rollout, cfg.epochs, cfg.minibatches) == ("ppo", 16, 128, 2, 8)
    assert (cfg.clip_coef, cfg.clip_vloss, cfg.gamma, cfg.gae_lambda) == (0.08, True, 0.993, 0.95)
    assert (cfg.ent_coef, cfg.vf_coef, cfg.max_grad_norm) == (0.003, 0.5, 0.64)
    assert (cfg.lr, cfg.optimizer, cfg.anneal_lr) == (3.43e-4, "adam", True)
    assert TrainConfig(preset="football-ppo", num_envs=8).resolved().num_envs == 8  # flags win


# --- with gfootball ------------------------------------------------------------------------------

def rollout(env: FootballEnv, seed: int | None, steps: int) -> list[tuple]:
    """Observations and rewards of `steps` steps with a fixed action sequence, from reset(seed)."""
    obs, _ = env.reset(seed=seed)
    trace = [obs.copy()]
    for t in range(steps):
        obs, reward, terminated, truncated, _ = env.step((5 * t + 3) % env.action_space.n)
        trace.append((obs.copy(), reward, terminated))
        if terminated or truncated:
            obs, _ = env.reset(seed=None if seed is None else seed + 1)
            trace.append(obs.copy())
    return trace


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else
        all(np.array_equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b))


@needs_gfootball
def test_same_reset_seed_same_episode_even_interleaved_with_another_game():
    """Engine randomness is seeded per episode and per game, so a second game in the process is harmless."""
    spec = FootballSpec("academy_3_vs_1_with_keeper")
    first, second = FootballEnv(spec), FootballEnv(spec)
    try:
        alone = rollout(first, seed=11, steps=60)
        obs, _ = first.reset(seed=11)
        second.reset(seed=99)
        again = [obs.copy()]
        for t in range(60):  # interleave a game with another seed, step for step
            step = first.step((5 * t + 3) % first.action_space.n)
            second.step(t % second.action_space.n)
            again.append((step[0].copy(), step[1], step[2]))
            if step[2] or step[3]:
                obs, _ = first.reset(seed=12)
                again.append(obs.copy())
        assert same(alone, again)
        assert not same(alone, rollout(second, seed=12345, steps=60))
    finally:
        first.close()
        second.close()


@needs_gfootball
def test_unseeded_resets_do_not_replay_the_last_seed():
    env = FootballEnv(FootballSpec("academy_3_vs_1_with_keeper"))
    try:
        env.reset(seed=7)
        first, second = rollout(env, seed=None, steps=40), rollout(env, seed=None, steps=40)
        assert not same(first, second)
    finally:
        env.close()


@needs_gfootball
@pytest.mark.parametrize("spec", [FootballSpec("academy_3_vs_1_with_keeper", rewards="scoring,checkpoints"),
                                  FootballSpec("academy_empty_goal_close", "extracted")])
def test_a_saved_game_plays_on_exactly_in_another_env(spec):
    """States saved at the start, the middle and one step before the end of an episode restore into
    another env (the first never reset) and play on identically; gfootball alone crashes on the last."""
    source, target = FootballEnv(spec), FootballEnv(spec)
    try:
        source.reset(seed=5)
        states, steps = [], []
        for t in range(400):
            states.append(source.get_state())
            obs, reward, terminated, *_ = source.step((5 * t + 3) % source.action_space.n)
            steps.append((obs.copy(), reward, terminated))
            if terminated:
                break
        assert terminated and len(steps) > 2
        for start in (len(steps) - 1, 0, len(steps) // 2):
            target.set_state(states[start])
            replay = []
            for t in range(start, len(steps)):
                obs, reward, terminated, *_ = target.step((5 * t + 3) % target.action_space.n)
                replay.append((obs.copy(), reward, terminated))
            assert same(replay, steps[start:]), f"restored at step {start}"
    finally:
        source.close()
        target.close()


@needs_gfootball
def test_extracted_is_stacked_channel_first_uint8():
    env = FootballEnv(FootballSpec("academy_empty_goal_close", "extracted"))
    try:
        obs, _ = env.reset(seed=3)
        assert env.observation_space.shape == obs.shape == (16, 72, 96) and obs.dtype == np.uint8
        obs, *_ = env.step(0)
        assert obs.shape == (16, 72, 96) and obs.max() == 255
    finally:
        env.close()


def small(logdir: Path, **overrides) -> TrainConfig:
    base = {"env": "gfootball/academy_empty_goal_close", "preset": "football-ppo", "num_envs": 4,
            "rollout": 32, "minibatches": 4, "total_steps": 4 * 32 * 3, "workers": 2,
            "logdir": str(logdir), "progress": False, "checkpoint_every": 1}
    return TrainConfig(**{**base, **overrides})


def trace(logdir: Path) -> list[str]:
    rows = (logdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["actions_sha256"] for line in rows]


@needs_gfootball
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_same_seed_same_bits_with_one_or_two_workers(tmp_path, no_leaks, mode):
    a = train(small(tmp_path / "a", mode=mode, workers=1, max_batch=4))
    b = train(small(tmp_path / "b", mode=mode, workers=2, max_batch=2))
    assert a["final_params_sha256"] == b["final_params_sha256"]
    assert trace(tmp_path / "a") == trace(tmp_path / "b")
    assert a["global_step"] == 384 and a["episodes"] > 0  # episodes ended and reset with derived seeds


@needs_gfootball
@pytest.mark.slow
def test_a_run_resumes_from_a_periodic_checkpoint_bit_for_bit(tmp_path, no_leaks):
    full = train(small(tmp_path / "full", total_steps=4 * 32 * 4))
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    resumed = resume(crashed / "checkpoints" / "update-0000002.pt", workers=1)
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert trace(crashed) == trace(tmp_path / "full")
    assert json.loads((crashed / "metrics.jsonl").read_text().splitlines()[2])["resume_envs"] == "restored"


@needs_gfootball
def test_extracted_trains_the_papers_smm_cnn(tmp_path, no_leaks):
    from htsrl_aio.envs import EnvSpec
    from htsrl_aio.models.build import build_model

    cfg = small(tmp_path / "r", football_representation="extracted", num_envs=2, rollout=16, minibatches=2,
                total_steps=64)
    spec = EnvSpec.from_spaces(gym.spaces.Box(0, 255, (16, 72, 96), np.uint8), gym.spaces.Discrete(19))
    convs = [m for m in build_model(spec, cfg.resolved()).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)), (64, (3, 3), (1, 1))]
    assert train(cfg)["global_step"] == 64


@needs_gfootball
def test_cli_trains_with_the_preset(tmp_path, no_leaks):
    proc = subprocess.run([sys.executable, "-m", "htsrl_aio.cli", "train", "--env",
                           "gfootball/academy_run_to_score", "--football-rewards", "scoring,checkpoints",
                           "--preset", "football-ppo",
                           "--num-envs", "2", "--rollout", "16", "--minibatches", "2", "--total-steps", "64",
                           "--workers", "2", "--logdir", str(tmp_path / "r"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "done: 64 steps" in proc.stdout
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["clip_coef"], config["football_rewards"]) == (0.08, "scoring,checkpoints")


# --- several players: a FootballTeam is a ParallelEnv -----------------------------------------------

@needs_gfootball
@pytest.mark.parametrize("representation,shape", [("simple115v2", (115,)), ("extracted", (16, 72, 96))])
def test_each_controlled_player_is_an_agent_with_its_own_view(representation, shape):
    team = FootballTeam(FootballSpec("academy_3_vs_1_with_keeper", representation, players=3))
    try:
        obs, _ = team.reset(seed=3)
        assert team.agents == team.possible_agents == ["left_0", "left_1", "left_2"]
        assert all(o.shape == shape == team.observation_space(a).shape for a, o in obs.items())
        assert not np.array_equal(obs["left_0"], obs["left_1"])  # each marks its own player
        obs, rewards, terminations, truncations, _ = team.step(dict.fromkeys(team.agents, 0))
        assert set(rewards) == set(terminations) == set(truncations) == set(obs) == set(team.possible_agents)
    finally:
        team.close()


@needs_gfootball
def test_a_teams_saved_game_plays_on_exactly_in_another_env():
    spec = FootballSpec("academy_3_vs_1_with_keeper", rewards="scoring,checkpoints", players=3)
    first, second = FootballTeam(spec), FootballTeam(spec)
    try:
        first.reset(seed=11)
        moves = np.random.default_rng(0).integers(19, size=(40, 3))
        for move in moves[:10]:
            first.step(dict(zip(first.possible_agents, move.tolist())))
        second.set_state(first.get_state())
        for move in moves[10:]:
            actions = dict(zip(first.possible_agents, move.tolist()))
            if not first.agents:
                break
            a, b = first.step(actions), second.step(actions)
            assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0]) and a[1:4] == b[1:4]
    finally:
        first.close()
        second.close()


@needs_gfootball
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_several_players_train_the_same_bits_with_one_or_two_workers_and_resume(tmp_path, no_leaks, mode):
    team = {"env": "gfootball/academy_3_vs_1_with_keeper", "football_players": 3, "critic": "global",
            "num_envs": 2, "total_steps": 2 * 32 * 4}
    a = train(small(tmp_path / "a", mode=mode, workers=1, max_batch=6, **team))
    b = train(small(tmp_path / "b", mode=mode, workers=2, max_batch=2, **team))
    assert a["final_params_sha256"] == b["final_params_sha256"]
    assert trace(tmp_path / "a") == trace(tmp_path / "b")
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["agent_steps"] == 3 * rows[-1]["global_step"]
    crashed = as_if_crashed_after(tmp_path / "a", tmp_path / "crashed")
    resumed = resume(crashed / "checkpoints" / "update-0000002.pt", workers=1)
    assert resumed["final_params_sha256"] == a["final_params_sha256"]
