"""The engine backend: envs in C++ vector engines (ale-py, EnvPool), in groups stepped in lockstep.

Its knobs (--engine-batch, --engine-threads) and inference's batch make-up change speed, never a bit,
and a run gives the same bits as with one env per worker process (episodes, seeded resets and
truncations included).
"""

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
from harness import as_if_crashed_after

from htsrl_aio import ConfigError, TrainConfig, resume, train
from htsrl_aio.backends.engine import engine_groups
from htsrl_aio.cli import main as cli_main
from htsrl_aio.envs import resolve_env


def run(path: Path, **overrides) -> tuple[dict, list[dict]]:
    summary = train(TrainConfig(**{"logdir": str(path), "progress": False, "tensorboard": False,
                                   **overrides}))
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def assert_same_bits(runs: list[tuple[dict, list[dict]]]) -> None:
    (first, first_rows), *others = runs
    for summary, rows in others:
        assert summary["final_params_sha256"] == first["final_params_sha256"]
        assert [r["actions_sha256"] for r in rows] == [r["actions_sha256"] for r in first_rows]
        assert summary["episodes"] == first["episodes"]


def test_groups_cover_every_env_once():
    assert engine_groups(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert engine_groups(4, 8) == [range(0, 4)]


@pytest.mark.slow
@pytest.mark.parametrize("mode,engines", [
    ("hts", ((5, 1, 5), (2, 2, 5), (1, 1, 1))),
    ("sync", ((2, 2, 1),)),
])
def test_atari_engines_give_the_bits_of_worker_processes_whatever_the_grouping(tmp_path, no_leaks, mode,
                                                                               engines):
    """Breakout with episodic life: lost lives, game overs and seeded resets all happen in 3 updates;
    5 envs make groups of unequal size, and one engine steps while another waits at the swap.
    (engine batch, engine threads, max batch) vary; so does where the envs run."""
    base = dict(env="ALE/Breakout-v5", preset="atari-ppo", mode=mode, num_envs=5, rollout=64,
                total_steps=5 * 64 * 3, minibatches=4, atari_episodic_life=True)
    runs = [run(tmp_path / "process", env_backend="process", workers=2, **base)]
    for batch, threads, max_batch in engines:
        runs.append(run(tmp_path / f"b{batch}t{threads}m{max_batch}", env_backend="engine",
                        engine_batch=batch, engine_threads=threads, max_batch=max_batch, **base))
    assert_same_bits(runs)
    assert runs[0][0]["episodes"] >= 1
    batch, threads, max_batch = engines[-1] if mode == "sync" else engines[1]
    config = json.loads((tmp_path / f"b{batch}t{threads}m{max_batch}" / "config.json").read_text())
    assert config["env_runs"] == f"in 3 C++ vector engine(s) of up to 2 envs, {threads} thread(s) each"


def test_envpool_engines_give_the_bits_of_worker_processes_with_truncations(tmp_path, no_leaks):
    """EnvPool seeds each env when the engine is built: env i's seed must not depend on its group.
    A 20-step time limit makes truncations, whose final observations are bootstrapped."""
    pytest.importorskip("envpool")
    base = dict(env="envpool:CartPole-v1", env_kwargs={"max_episode_steps": 20}, num_envs=4, rollout=16,
                total_steps=4 * 16 * 3, minibatches=2)
    runs = [run(tmp_path / "process", env_backend="process", workers=2, **base)]
    for batch, threads in ((4, 1), (3, 2), (1, 1)):
        runs.append(run(tmp_path / f"b{batch}t{threads}", env_backend="engine", engine_batch=batch,
                        engine_threads=threads, **base))
    assert_same_bits(runs)
    # Every episode was cut at 20 steps (random CartPole rarely lasts that long: some were cut).
    assert runs[0][0]["episodes"] >= 4


@pytest.mark.slow
def test_a_resumed_engine_run_restarts_its_envs_and_says_so(tmp_path, no_leaks):
    """Engine state cannot be saved: after a crash, the envs start again with new derived seeds."""
    path = tmp_path / "run"
    run(path, env="ALE/Pong-v5", preset="atari-ppo", num_envs=2, rollout=16, total_steps=2 * 16 * 4,
        minibatches=2, checkpoint_every=2)
    crashed = as_if_crashed_after(path, tmp_path / "crashed")
    summary = resume(str(crashed))
    assert summary["global_step"] == 2 * 16 * 4
    rows = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if "resume_envs" in r]
    assert resumed and resumed[0]["resume_envs"].startswith("restarted with new derived seeds")


def test_engine_backend_for_an_env_outside_an_engine_is_one_sentence():
    with pytest.raises(ConfigError, match=r"^--env-backend engine runs envs in a C\+\+ vector engine, which "
                                          r"'CartPole-v1' is not"):
        train(TrainConfig(env="CartPole-v1", env_backend="engine", total_steps=512, progress=False))


def test_unknown_envpool_task_suggests_the_close_ones(tmp_path, capsys):
    pytest.importorskip("envpool")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--env", "envpool:Pongg-v5", "--logdir", str(tmp_path / "r"), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown EnvPool task 'Pongg-v5'" in err[0] and "Pong-v5" in err[0]


def test_missing_envpool_names_the_extra(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_envpool(name, *args, **kwargs):
        if name == "envpool" or name.startswith("envpool."):
            raise ImportError("No module named 'envpool'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_envpool)
    with pytest.raises(SystemExit):
        cli_main(["train", "--env", "envpool:Pong-v5", "--logdir", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "htsrl-aio[envpool]"' in err[0]


def test_football_from_envpool_stacks_four_super_mini_maps_as_the_paper(no_leaks):
    pytest.importorskip("envpool")
    env = resolve_env("envpool:gfootball/academy_empty_goal_close-v1")()
    assert env.observation_space.shape == (72, 96, 16)  # 4 frames of the 4-channel SMM, channels last
    first, _ = env.reset(seed=3)
    assert all(np.array_equal(first[..., :4], first[..., 4 * i:4 * i + 4]) for i in range(4))
    window = [first[..., :4]] * 4
    for _ in range(3):
        obs = env.step(5)[0]  # 5: move right, so the players move
        window = [*window[1:], obs[..., 12:]]
        assert np.array_equal(obs, np.concatenate(window, axis=-1))
    assert not np.array_equal(window[0], window[-1])
    env.close()


def _envpool_paths(factory):
    """The env of each path an EnvPool task runs on: one env (probe, check-env, eval) and a group of the
    engine backend, built from the same recipe."""
    group = factory.engine.build(2, 1, [1, 2])
    return [factory().reset(seed=1)[0], group.reset([0, 1], [1, 2])[0]]


@pytest.mark.parametrize("task,flags,shape", [
    ("Pong-v5", {"frame_size": (64, 48), "grayscale": True, "frame_stack": 2}, (2, 64, 48)),
    ("Pong-v5", {}, (4, 84, 84)),
    ("Basic-v1", {"frame_size": (60, 80)}, (12, 60, 80)),  # ViZDoom: 4 RGB frames, channels first
])
def test_envpool_frame_flags_become_the_tasks_own_options(task, flags, shape, tmp_path, monkeypatch):
    pytest.importorskip("envpool")
    monkeypatch.chdir(tmp_path)  # ViZDoom writes _vizdoom.ini where it runs
    factory = resolve_env(f"envpool:{task}", TrainConfig(**flags))
    assert factory.engine.frame_stack == 1  # the task stacks its own frames: nothing stacked on top
    for obs in _envpool_paths(factory):
        assert obs.shape == shape


@pytest.mark.parametrize("task,flags,message", [
    ("CartPole-v1", {"grayscale": True},
     r"^--grayscale cannot be applied to envpool:CartPole-v1: the task has no gray_scale option; drop the "),
    ("gfootball/academy_empty_goal_close-v1", {"frame_size": (36, 48)},
     r"^--frame-size cannot be applied to envpool:gfootball/academy_empty_goal_close-v1: the task has no "
     r"img_height/img_width option"),
    ("Pong-v5", {"env_kwargs": {"obs_type": "ram"}}, r"^--env-kwargs obs_type: EnvPool task 'Pong-v5' has no "
                                                     r"option 'obs_type' \(its options: .*img_height"),
    ("Pong-v5", {"env_kwargs": {"num_envs": 3}}, r"^--env-kwargs num_envs: .*htsrl-aio sets it from its own"),
    ("Pong-v5", {"env_kwargs": {"episodic_life": True}}, r"^--env-kwargs episodic_life cannot be given for "
                                                         r"EnvPool's Atari task 'Pong-v5': htsrl-aio sets it "
                                                         r"\(--atari-episodic-life\)\."),
    ("Pong-v5", {"frame_size": (64, 64), "env_kwargs": {"img_height": 50}},
     r"^--frame-size and --env-kwargs img_height set the same option of envpool:Pong-v5; give one of them\."),
])
def test_envpool_options_the_task_lacks_are_one_sentence(task, flags, message):
    pytest.importorskip("envpool")
    with pytest.raises(ConfigError, match=message):
        resolve_env(f"envpool:{task}", TrainConfig(**flags))


def test_envpool_frame_stack_on_a_task_without_its_own_stacks_here():
    pytest.importorskip("envpool")
    factory = resolve_env("envpool:gfootball/academy_empty_goal_close-v1", TrainConfig(frame_stack=2))
    assert factory.engine.frame_stack == 2
    assert resolve_env("envpool:Pong-v5", TrainConfig(env_kwargs={"mode": 1, "full_action_space": True})
                       ).engine.kwargs == (("full_action_space", True), ("mode", 1))


def test_an_envpool_task_that_cannot_load_is_one_sentence(monkeypatch, tmp_path, capsys):
    """Procgen's library needs the system's Qt5; without it EnvPool raises ImportError as the task loads."""
    envpool = pytest.importorskip("envpool")

    def no_qt(task_id, **kwargs):
        raise ImportError("libQt5Gui.so.5: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(envpool, "make_spec", no_qt)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check-env", "envpool:BigfishEasy-v0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "htsrl-aio: error: --env envpool:BigfishEasy-v0: EnvPool cannot load this task (libQt5Gui.so.5: "
        "cannot open shared object file: No such file or directory)."]
