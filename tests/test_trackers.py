"""Trackers (W&B offline, MLflow's local store) and the versions recorded with every result: a stopped and
resumed run is one tracker run, its metrics continuous in global_step with no step logged twice."""

import json
import signal
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import as_if_crashed_after, metrics_rows, signalled

from htsrl_aio import TrainConfig, checkpoint, resume, train
from htsrl_aio.cli import build_parser
from htsrl_aio.cli import main as cli_main
from htsrl_aio.config import load_config_file
from htsrl_aio.errors import ConfigError
from htsrl_aio.outputs.run_dir import RunDirectory
from htsrl_aio.outputs.trackers import GuardedTracker, open_trackers

RUN = {"env": "CartPole-v1", "num_envs": 4, "rollout": 16, "workers": 1, "progress": False}
TRACKED = ["--wandb-project", "htsrl-tests", "--wandb-tags", "ci", "offline", "--mlflow"]


@pytest.fixture
def wandb_offline(monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def wandb_history(run: Path) -> tuple[set[str], list[list[int]]]:
    """The W&B run ids of a run directory's offline sessions, and the steps each session logged (in the
    order the sessions ran), read from W&B's own records (.wandb files: LevelDB-log framed protobufs)."""
    from wandb.proto import wandb_internal_pb2

    ids, sessions = set(), []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):  # named by start time
        steps = []
        for record in _leveldb_records(path.read_bytes()):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            kind = parsed.WhichOneof("record_type")
            if kind == "run":
                ids.add(parsed.run.run_id)
            elif kind == "history":
                steps.append(parsed.history.step.num)
        sessions.append(steps)
    return ids, sessions


def _leveldb_records(data: bytes, block: int = 32768) -> list[bytes]:
    """W&B's header (7 bytes), then LevelDB's log format: chunks of (crc, length, type) + data in blocks."""
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        room = block - pos % block
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if room < 7 or (length, kind) == (0, 0):  # a block's zero-filled tail
            pos += room
            continue
        pending = (b"" if kind in (1, 2) else pending) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            records.append(pending)
    return records


def mlflow_runs(run: Path) -> tuple[list[Any], dict[int, int]]:
    """The MLflow runs of a run directory's own store, and how often each step of `update` was logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run.resolve() / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(runs[0].info.run_id, "update") if runs else []
    counts: dict[int, int] = {}
    for metric in history:
        counts[metric.step] = counts.get(metric.step, 0) + 1
    return runs, counts


def test_config_json_and_checkpoints_record_the_same_versions_and_machine(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**RUN, total_steps=4 * 16 * 2, logdir=str(run)))
    versions = json.loads((run / "config.json").read_text())["versions"]
    assert {"python", "torch", "numpy", "gymnasium", "htsrl-aio", "cpu"} <= set(versions)
    assert versions["cpu"] and ("gpu" in versions) == torch.cuda.is_available()
    assert checkpoint.load(run / "checkpoint.pt").versions == versions


def test_the_gpu_model_is_recorded_where_torch_sees_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")
    checkpoint._hardware.cache_clear()
    try:
        assert checkpoint.library_versions()["gpu"] == "NVIDIA H100 80GB HBM3"
    finally:
        checkpoint._hardware.cache_clear()


@pytest.mark.parametrize("flags,module,extra", [(["--wandb-project", "p"], "wandb", "wandb"),
                                                (["--mlflow"], "mlflow", "mlflow"),
                                                (["--mlflow"], "sqlalchemy", "mlflow")])
def test_a_missing_tracker_package_is_one_sentence_before_anything_starts(tmp_path, monkeypatch, capsys,
                                                                          flags, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were missing
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", *flags, "--logdir", str(run), "--no-progress"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"htsrl-aio: error: {flags[0]} needs the {extra} extra: pip install "
                                       f"'htsrl-aio[{extra}]' (or drop {flags[0]}).\n")
    assert not run.exists()  # nothing started


def test_wandb_settings_without_a_project_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--wandb-group", "g", "--logdir", str(tmp_path / "run")])
    assert capsys.readouterr().err == ("htsrl-aio: error: --wandb-group applies to W&B logging; add "
                                       "--wandb-project or drop it.\n")


def test_wandb_tags_are_names_on_the_command_line_and_in_toml(tmp_path):
    parsed = build_parser().parse_args(["train", "--wandb-project", "p", "--wandb-tags", "ci", "hts"])
    assert parsed.wandb_tags == ["ci", "hts"]
    toml = tmp_path / "run.toml"
    toml.write_text('wandb_project = "p"\nwandb_tags = ["ci", "hts"]\n')
    assert TrainConfig(**load_config_file(toml)).resolved().wandb_tags == ("ci", "hts")
    toml.write_text('wandb_tags = ["ci", 3]\n')
    with pytest.raises(ConfigError, match=r"^wandb_tags in .* has the wrong type: \['ci', 3\]\.$"):
        load_config_file(toml)


def test_a_tracker_that_cannot_start_is_one_warning_and_the_run_goes_on_without_it(tmp_path, monkeypatch,
                                                                                    caplog):
    wandb = pytest.importorskip("wandb")

    def no_login(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", no_login)
    run_dir = RunDirectory.create(tmp_path / "run")
    try:
        assert open_trackers(TrainConfig(wandb_project="p").resolved(), run_dir, {}, resumed=False) == []
    finally:
        run_dir.close()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "W&B logging is off: its run could not start (UsageError: api_key not configured (no-tty)); the run "
        "goes on without it."]


class _Recording:
    def __init__(self, fail_at: int | None = None) -> None:
        self.steps: list[int] = []
        self.closed: list[Any] = []
        self.fail_at = fail_at

    def write(self, metrics: dict[str, Any]) -> None:
        if metrics["global_step"] == self.fail_at:
            raise OSError(28, "No space left on device")
        self.steps.append(metrics["global_step"])

    def close(self, summary: dict[str, Any] | None) -> None:
        self.closed.append(summary)


def test_a_tracker_failing_mid_run_warns_once_and_gets_nothing_more(caplog):
    tracker = _Recording(fail_at=20)
    guarded = GuardedTracker("W&B", tracker, skip_through=None)
    for step in (10, 20, 30, 40):
        guarded.write({"global_step": step, "sps": 1.0})
    guarded.close({"updates": 4})
    assert tracker.steps == [10] and tracker.closed == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "W&B logging stopped: OSError: [Errno 28] No space left on device; metrics.jsonl still gets every "
        "update."]


def test_a_continued_tracker_run_gets_only_the_rows_it_does_not_hold():
    tracker = _Recording()
    guarded = GuardedTracker("MLflow", tracker, skip_through=20)
    for step in (10, 20, 30):
        guarded.write({"global_step": step})
    guarded.close(None)
    assert tracker.steps == [30] and tracker.closed == [None]


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_and_resumed_is_one_tracker_run_with_every_step_once(tmp_path,
                                                                                       wandb_offline):
    run = tmp_path / "run"
    settings = ["--env", "envs_for_tests:jitter_cartpole", "--num-envs", "4", "--rollout", "16",
                "--total-steps", str(4 * 16 * 30), "--workers", "1", "--checkpoint-every", "0"]
    argv = [sys.executable, "-m", "htsrl_aio.cli", "train", *settings, *TRACKED, "--logdir", str(run),
            "--no-progress"]
    code, stderr = signalled(argv, run, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr
    stopped_at = metrics_rows(run)[-1]["global_step"]
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0

    steps = [row["global_step"] for row in metrics_rows(run)]
    assert len(steps) == 30 and stopped_at < steps[-1]
    ids, sessions = wandb_history(run)
    assert len(ids) == 1 and len(sessions) == 2  # one W&B run, resumed once
    assert sessions[0][-1] == stopped_at and sessions[0] + sessions[1] == steps
    runs, counts = mlflow_runs(run)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(counts) == steps and set(counts.values()) == {1}
    assert runs[0].data.tags["final_checkpoint"] == str((run / "checkpoint.pt").resolve())
    assert runs[0].data.tags["versions.torch"] == torch.__version__


@pytest.mark.slow
def test_rows_logged_after_the_checkpoint_are_not_logged_again_and_other_versions_resume(tmp_path,
                                                                                        wandb_offline):
    full = tmp_path / "full"
    train(TrainConfig(**RUN, total_steps=4 * 16 * 5, checkpoint_every=3, logdir=str(full),
                      wandb_project="htsrl-tests", mlflow=True))
    crashed = as_if_crashed_after(full, tmp_path / "crashed")  # rows 4 and 5 are past its checkpoint
    config_json = json.loads((crashed / "config.json").read_text())
    config_json["versions"] = {**config_json["versions"], "torch": "0.0.1", "cpu": "another machine's"}
    (crashed / "config.json").write_text(json.dumps(config_json))

    resume(crashed)
    steps = [row["global_step"] for row in metrics_rows(crashed)]
    assert len(steps) == 5
    assert json.loads((crashed / "config.json").read_text())["versions"]["torch"] == torch.__version__
    ids, sessions = wandb_history(crashed)
    assert len(ids) == 1 and sessions == [steps, []]  # the resumed session had nothing new to log
    runs, counts = mlflow_runs(crashed)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(counts) == steps and set(counts.values()) == {1}
    recorded = json.loads((crashed / "trackers.json").read_text())
    assert recorded["wandb"]["logged_through"] == recorded["mlflow"]["logged_through"] == steps[-1]
