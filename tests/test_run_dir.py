"""The run directory survives what crashes, supervisors and people do to it: stale temporary files,
a corrupt checkpoint.pt, two runs on one directory, a refused start, a hand-edited config.json, a
cut last metrics line, a full disk and a read-only file system."""

import json
import os
import re
import resource
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from harness import as_if_crashed_after

from htsrl_aio import ConfigError, TrainConfig, Trainer, train
from htsrl_aio.checkpoint import FORMAT
from htsrl_aio.cli import main as cli_main
from htsrl_aio.outputs.run_dir import atomic_write
from htsrl_aio.training import train_async

UPDATES = 10


def config(run_dir: Path, **overrides) -> TrainConfig:
    base = {"env": "CartPole-v1", "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * UPDATES,
            "workers": 1, "logdir": str(run_dir), "progress": False, "checkpoint_every": 3,
            "keep_checkpoints": 2}
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(config(run))
    return run


@pytest.fixture
def crashed(finished, tmp_path) -> Path:
    """A copy of the finished run as a crash after update 9's checkpoint would have left it."""
    return as_if_crashed_after(finished, tmp_path / "crashed")


def updates(run: Path) -> list[int]:
    return [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_removes_temporary_files_a_kill_left(crashed):
    leftovers = [crashed / ".checkpoint.pt.k2j3h4.tmp", crashed / "checkpoints" / ".update-0000012.pt.x9.tmp"]
    for path in leftovers:
        path.write_bytes(os.urandom(1000))
    assert cli_main(["train", "--resume", str(crashed), "--no-progress"]) == 0
    assert not any(path.exists() for path in leftovers)


def test_a_corrupt_checkpoint_pt_falls_back_to_the_newest_readable_one(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000])  # cut by a crash
    assert cli_main(["eval", str(run), "--episodes", "1"]) == 0
    said = capsys.readouterr()
    assert "update 9" in said.out
    assert f"Using {run / 'checkpoints' / 'update-0000009.pt'} instead" in said.err
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "Using" in capsys.readouterr().err
    assert updates(run) == list(range(1, UPDATES + 1))


def test_a_checkpoint_missing_fields_is_one_sentence_on_resume_and_eval(finished, tmp_path, capsys):
    lacking = tmp_path / "lacking.pt"
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    del state["update"]
    torch.save(state, lacking)
    assert state["format"] == FORMAT
    for command in (["train", "--resume"], ["eval"]):
        with pytest.raises(SystemExit) as exited:
            cli_main([*command, str(lacking)])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "is an htsrl-aio checkpoint but lacks update" in err and "Traceback" not in err


async def test_a_second_run_or_resume_on_a_directory_in_use_is_refused(run_dir, no_leaks):
    in_use = rf"run directory {run_dir} is in use by another htsrl-aio run \(pid {os.getpid()}\)"
    long = config(run_dir, total_steps=4 * 16 * 1000)
    async with Trainer(long) as trainer:
        async for metrics in trainer.updates():
            if metrics["update"] == 4:  # checkpoints/update-3.pt exists: a resume would find it
                with pytest.raises(ConfigError, match=in_use):
                    await train_async(long)
                with pytest.raises(ConfigError, match=in_use):
                    async with Trainer.resume(run_dir):
                        pass
                break
    assert updates(run_dir)[:4] == [1, 2, 3, 4]  # the refused runs wrote nothing


def test_a_refused_start_leaves_a_directory_the_corrected_retry_reuses(run_dir, no_leaks):
    with pytest.raises(ConfigError, match="cnn"):
        train(config(run_dir, model="cnn"))  # refused after the directory was made
    assert run_dir.is_dir()
    summary = train(config(run_dir, total_steps=4 * 16 * 2))
    assert summary["updates"] == 2 and updates(run_dir) == [1, 2]


def test_a_users_checkpoint_and_error_log_survive_a_refused_start_and_the_retry_works(run_dir, no_leaks):
    run_dir.mkdir()
    theirs = {"checkpoint.pt": os.urandom(2000), "error.log": b"a log the user keeps here\n"}
    for name, data in theirs.items():
        (run_dir / name).write_bytes(data)
    with pytest.raises(ConfigError, match="cnn"):
        train(config(run_dir, model="cnn"))  # refused after the directory was taken
    assert {name: (run_dir / name).read_bytes() for name in theirs} == theirs
    summary = train(config(run_dir, total_steps=4 * 16 * 2))
    assert summary["updates"] == 2 and updates(run_dir) == [1, 2]
    assert (run_dir / "error.log").read_bytes() == theirs["error.log"]  # not ours: never removed


async def test_what_a_start_that_got_nowhere_left_goes_only_once_a_later_start_is_accepted(run_dir, no_leaks):
    from htsrl_aio import EnvError

    with pytest.raises(EnvError, match="BadObservation"):  # fails at its first steps, before an update
        await train_async(config(run_dir, env="envs_for_tests:bad_observation_env",
                                 env_kwargs={"fault": "discrete_negative"}))
    assert not (run_dir / "checkpoint.pt").exists()  # no update completed: nothing to keep
    left = {name: (run_dir / name).read_bytes() for name in ("error.log",)}
    with pytest.raises(ConfigError, match="cnn"):
        await train_async(config(run_dir, model="cnn"))
    assert {name: (run_dir / name).read_bytes() for name in left} == left  # a refused start touches nothing
    async with Trainer(config(run_dir)) as trainer:
        async for _ in trainer.updates():  # the first update: the start was accepted
            assert not (run_dir / "error.log").exists()
            break


def test_a_directory_with_a_completed_update_is_still_never_reused(crashed):
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config(crashed))


def test_resume_refuses_a_hand_edited_config_naming_what_differs(crashed, capsys):
    path = crashed / "config.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "lr": 0.1, "seed": 7, "workers": 2}))  # workers may change
    with pytest.raises(SystemExit) as exited:
        cli_main(["train", "--resume", str(crashed), "--no-progress"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"lr ({stored['lr']!r} in the checkpoint, 0.1 in config.json)" in err
    assert f"seed ({stored['seed']!r} in the checkpoint, 7 in config.json)" in err
    assert "workers" not in err


def test_a_cut_last_metrics_line_is_dropped_with_a_note_by_resume_and_plot(crashed, capsys):
    metrics = crashed / "metrics.jsonl"
    last = metrics.read_text().splitlines()[-1]
    with open(metrics, "a") as f:
        f.write(last[: len(last) // 2])  # killed while appending the next row
    assert cli_main(["plot", str(crashed), "-o", str(crashed / "curves.png")]) == 0
    assert "was cut off" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(crashed), "--no-progress"]) == 0
    assert "was cut off" in capsys.readouterr().err
    assert updates(crashed) == list(range(1, UPDATES + 1))


def test_diff_names_the_file_and_line_of_a_bad_metrics_line(crashed, finished, capsys):
    metrics = crashed / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[2] = lines[2][:40]
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exited:
        cli_main(["diff", str(finished), str(crashed)])
    assert exited.value.code == 2
    assert f"{metrics}, line 3, is not a metrics row" in capsys.readouterr().err


@pytest.mark.parametrize("metrics,message", [
    ("[" * 100_000 + "\n", r"metrics\.jsonl, line 1, is not a metrics row \(maximum recursion depth"),
    ("", r"holds no update to compare: its metrics\.jsonl is empty"),
], ids=["nested-too-deep", "no-update"])
def test_diff_of_a_damaged_or_foreign_run_directory_is_one_sentence(finished, tmp_path, capsys, metrics,
                                                                     message):
    other = tmp_path / "other"
    other.mkdir()
    rows = (finished / "metrics.jsonl").read_text()
    (other / "metrics.jsonl").write_text(metrics + rows if metrics else "")
    with pytest.raises(SystemExit) as exited:
        cli_main(["diff", str(finished), str(other)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err, err


def test_a_full_disk_at_start_is_one_sentence(run_dir, capsys):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # no file of this process may grow past 64 bytes
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main(["train", "--logdir", str(run_dir), "--no-progress", "--workers", "1"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert exited.value.code == 2
    assert capsys.readouterr().err == (f"htsrl-aio: error: cannot write to run directory {run_dir}: File too "
                                       "large; free disk space or pass another --logdir.\n")


async def test_a_full_disk_while_appending_metrics_is_one_sentence(run_dir, no_leaks):
    from htsrl_aio.outputs.run_dir import RunDirWriteError

    metrics = run_dir / "metrics.jsonl"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        with pytest.raises(RunDirWriteError, match=rf"could not write {metrics}: File too large; free disk"):
            async with Trainer(config(run_dir, checkpoint_every=0, tensorboard=False)) as trainer:
                async for row in trainer.updates():
                    if row["update"] == 2:  # the next row cannot be appended
                        resource.setrlimit(resource.RLIMIT_FSIZE, (metrics.stat().st_size, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_an_existing_run_directory_on_a_read_only_file_system_is_one_sentence(tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(read_only)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only file system needs root")
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main(["train", "--logdir", str(read_only), "--no-progress"])
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert exited.value.code == 2
    assert capsys.readouterr().err == (f"htsrl-aio: error: cannot write to run directory {read_only}: "
                                       "Read-only file system; pass a writable --logdir.\n")




def test_files_written_whole_get_the_mode_of_any_other_file_the_user_writes(tmp_path):
    """config.json, checkpoints and exported policies were private (mkstemp's 0600): TensorBoard or a
    server running as another user could not read them."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    written = tmp_path / "written"
    atomic_write(written, lambda f: f.write(b"x"))
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
