"""Using a trained agent (htsrl-aio eval, with video) and the TensorBoard scalars of a run."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
from harness import metrics_rows, signalled

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


def test_a_full_disk_stops_tensorboard_logging_with_one_warning_and_the_run_goes_on(tmp_path, monkeypatch,
                                                                                   caplog):
    from torch.utils.tensorboard import SummaryWriter

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    run = tmp_path / "run"
    summary = train(TrainConfig(env="CartPole-v1", num_envs=2, rollout=8, total_steps=2 * 8 * 3, workers=1,
                                logdir=str(run), progress=False))
    assert summary["updates"] == 3 and len(metrics_rows(run)) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"TensorBoard logging stopped: could not write events to {run} (No space left on "
                        "device); metrics.jsonl still gets every update."]


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


FREEZES = "hangs_after_40_steps_cartpole"


@pytest.fixture(scope="module")
def runs_of_failing_envs(tmp_path_factory) -> Path:
    """Runs of envs that train (each env takes 16 steps) and fail when evaluated: one freezes at its 41st
    step, the other raises at its 101st."""
    root = tmp_path_factory.mktemp("failing")
    for name in (FREEZES, "raising_cartpole"):
        train(TrainConfig(env=f"envs_for_tests:{name}", num_envs=2, rollout=8, total_steps=2 * 8 * 2,
                          workers=1, logdir=str(root / name), progress=False))
    return root


def _eval_argv(run: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "htsrl_aio.cli", "eval", str(run), "--episodes", "20", *flags]


def _eval(run: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    # The timeout only turns a hang into a failure (before eval had an env timeout it waited for ever).
    return subprocess.run(_eval_argv(run, *flags), capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("env,flags,message", [
    (FREEZES, ["--env-timeout", "1"],
     f"htsrl-aio: eval failed: env 'envs_for_tests:{FREEZES}': step() did not answer within --env-timeout "
     "1 s; make the env answer sooner (give its I/O a timeout of its own) or raise --env-timeout.\n"),
    ("raising_cartpole", [], "htsrl-aio: eval failed: env 'envs_for_tests:raising_cartpole' failed in "
                             "step(): RuntimeError: simulator lost its connection.\n"),
], ids=["frozen", "raising"])
def test_an_env_that_freezes_or_raises_during_eval_is_one_sentence(runs_of_failing_envs, env, flags, message):
    done = _eval(runs_of_failing_envs / env, *flags)
    assert (done.returncode, done.stderr) == (1, message)


def test_the_first_ctrl_c_stops_eval_inside_a_frozen_env_in_one_line(runs_of_failing_envs, tmp_path,
                                                                    monkeypatch):
    frozen = tmp_path / "frozen"
    monkeypatch.setenv("HTSRL_TEST_FROZEN_MARKER", str(frozen))
    argv = _eval_argv(runs_of_failing_envs / FREEZES, "--env-timeout", "0")
    code, stderr = signalled(argv, tmp_path, signal.SIGINT, when=frozen.exists)
    assert (code, stderr) == (130, "htsrl-aio: eval interrupted.\n")
