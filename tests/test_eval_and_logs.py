"""Using a trained agent (htsrl-aio eval, with video) and the TensorBoard scalars of a run."""

import json
import re
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest

from htsrl_aio import TrainConfig, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.outputs.tensorboard import ENABLE_HINT, ScalarLog


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "run"
    train(TrainConfig(env="CartPole-v1", num_envs=8, total_steps=40_000, workers=2, logdir=str(run),
                      progress=False))
    return run


@pytest.mark.slow
def test_eval_reports_the_trained_return_and_is_repeatable(trained_run, capsys):
    assert cli_main(["eval", str(trained_run), "--episodes", "5", "--deterministic"]) == 0
    first = capsys.readouterr().out
    assert cli_main(["eval", str(trained_run / "checkpoint.pt"), "--episodes", "5", "--deterministic"]) == 0
    assert capsys.readouterr().out == first  # same checkpoint, same seeds: the same episodes
    mean = float(first.split("return ")[1].split()[0])
    trained = json.loads((trained_run / "summary.json").read_text())["episode_return_mean"]
    assert mean > 100 and trained > 100  # it learned, and eval sees the learned policy, not a fresh one


@pytest.mark.slow
def test_eval_writes_a_video_of_every_step(trained_run, tmp_path, capsys):
    video = tmp_path / "agent.mp4"
    assert cli_main(["eval", str(trained_run), "--episodes", "2", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    mean_length = float(out.split("mean length ")[1].split()[0])
    reader = imageio.get_reader(str(video))
    frames = sum(1 for _ in reader)
    assert frames == round(2 * mean_length)
    assert reader.get_meta_data()["size"] == (600, 400)  # CartPole's rgb_array render


def test_eval_of_a_missing_or_empty_run_is_one_sentence(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "nope", "does not exist"), (tmp_path / "empty", "holds no checkpoint")]
    for target, message in cases:
        with pytest.raises(SystemExit) as exited:
            cli_main(["eval", str(target)])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_tensorboard_scalars_match_metrics(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run))
    events.Reload()
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    sps = events.Scalars("sps")
    assert [e.step for e in sps] == [r["global_step"] for r in rows]
    assert [e.value for e in sps] == pytest.approx([r["sps"] for r in rows], rel=1e-6)
    assert "on: tensorboard --logdir" in json.loads((trained_run / "config.json").read_text())["tensorboard"]


def test_without_tensorboard_installed_logging_is_off_with_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    log = ScalarLog(tmp_path, enabled=True)
    log.write({"global_step": 1, "sps": 1.0})
    log.close()
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("htsrl_aio.outputs.tensorboard", "WARNING", ENABLE_HINT)]
    assert log.status == ENABLE_HINT
    assert list(tmp_path.iterdir()) == []


def test_eval_video_builds_the_env_as_training_did(tmp_path, capsys):
    # A registered id trained with frame options: the video's env must get them too, or the network
    # meets raw (48, 64, 3) frames instead of 2 stacked grayscale ones.
    run = tmp_path / "run"
    train(TrainConfig(env="envs_for_tests:PixelCartPole-v0", grayscale=True, frame_stack=2, num_envs=2,
                      rollout=8, total_steps=2 * 8 * 2, workers=1, logdir=str(run), progress=False))
    video = tmp_path / "agent.mp4"
    assert cli_main(["eval", str(run), "--episodes", "1", "--video", str(video)]) == 0
    length = float(capsys.readouterr().out.split("mean length ")[1].split()[0])
    reader = imageio.get_reader(str(video))
    assert sum(1 for _ in reader) == length
    assert reader.get_meta_data()["size"] == (64, 48)  # the env's own rgb_array render, in colour


@pytest.mark.parametrize("env,message", [
    ("envs_for_tests:ManySpacesEnv", r"env 'envs_for_tests:ManySpacesEnv' cannot render them \(its "
                                     r"render_modes are \[\], without 'rgb_array'\); evaluate it without "
                                     r"--video\."),
    ("envs_for_tests:cartpole_60", r"the factory 'envs_for_tests:cartpole_60' takes no render_mode argument; "
                                   r"give it one and pass it to the env"),
], ids=["cannot-render", "factory-without-render-mode"])
def test_eval_video_of_an_env_without_frames_is_one_sentence(tmp_path, capsys, env, message):
    run = tmp_path / "run"
    train(TrainConfig(env=env, num_envs=2, rollout=8, total_steps=2 * 8, workers=1, logdir=str(run),
                      progress=False))
    with pytest.raises(SystemExit) as exited:
        cli_main(["eval", str(run), "--episodes", "1", "--video", str(tmp_path / "agent.mp4")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert re.search(rf"--video needs frames, but {message}", err) and "\n" not in err
