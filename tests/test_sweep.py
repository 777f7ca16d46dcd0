"""`htsrl-aio sweep`: the sweep file is checked in one sentence per problem, trials report to Optuna and
the pruner stops them at a swap, a sweep continues its study without rerunning a finished trial, a stop
signal stops every trial cleanly, and best.toml trains."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import HANG_S, metrics_rows, signalled, wait_until

from htsrl_aio.cli import main as cli_main
from htsrl_aio.errors import ConfigError, HtsrlError
from htsrl_aio.evaluate import evaluate
from htsrl_aio.training import run_event_loop

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

optuna = pytest.importorskip("optuna", reason='Optuna is not installed (pip install -e ".[sweep]")')

from htsrl_aio.sweep import (  # noqa: E402 (after the skip: the module is for the sweep extra)
    EVAL_RETURN,
    MetricsTail,
    Objective,
    TrialReport,
    _sweep_lock,
    continuation,
    load_sweep,
    open_study,
    run_sweep,
    toml_text,
)

# Tiny trials: 16 updates of CartPole, one worker each, no periodic checkpoints.
BASE = """
[base]
env = "CartPole-v1"
num_envs = 4
rollout = 32
total_steps = 2048
workers = 1
tensorboard = false
checkpoint_every = 0
"""
SPACE = """
[space.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true

[space.hidden]
type = "categorical"
choices = [[16], [32, 32]]
"""


def sweep_file(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,says", [
    (BASE, "lacks space"),
    (BASE + SPACE + "[oops]\n", "unknown key 'oops' in sweep file"),
    (BASE + "lrr = 1e-3\n" + SPACE, "unknown key 'lrr' in [base] of"),
    (BASE + 'logdir = "x"\n' + SPACE, "sets logdir"),
    (BASE + "gamma = -1.0\n" + SPACE, "is not a valid config: --gamma"),
    (BASE + "[space.minibatches]\ntype = 'int'\nlow = 3\nhigh = 8\n", "with the first value of each"),
    (BASE + "[space.lrr]\ntype = 'float'\nlow = 0.1\nhigh = 0.2\n", "did you mean 'lr'?"),
    (BASE + "[space.lr]\ntype = 'uniform'\nlow = 0.1\nhigh = 0.2\n", "type in [space.lr]"),
    (BASE + "[space.lr]\ntype = 'float'\nlow = 0.2\nhigh = 0.1\n", "needs low below high"),
    (BASE + "[space.lr]\ntype = 'float'\nlow = 0.0\nhigh = 0.1\nlog = true\n", "low must be above 0"),
    (BASE + "[space.lr]\ntype = 'float'\nlow = 0.1\n", "[space.lr] of"),
    (BASE + "[space.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.2\nlogg = true\n", "did you mean 'log'?"),
    (BASE + "[space.epochs]\ntype = 'float'\nlow = 2.0\nhigh = 8.5\n", "epochs in [space.epochs]"),
    (BASE + "[space.mode]\ntype = 'categorical'\nchoices = ['hts', 'async']\n", "must be one of"),
    (BASE + "[space.mode]\ntype = 'categorical'\nchoices = []\n", "non-empty list"),
    (BASE + "[space.num_envs]\ntype = 'int'\nlow = 2\nhigh = 8\n", "set in [base] and searched"),
    (BASE + "[space.env]\ntype = 'categorical'\nchoices = ['Acrobot-v1']\n", "cannot be searched"),
    (BASE + SPACE + "[objective]\nmetric = 'return'\n", "metric in [objective]"),
    (BASE + SPACE + "[objective]\nlast_updates = 0\n", "last_updates in [objective]"),
    (BASE + SPACE + "[objective]\ndirection = 'up'\n", "direction in [objective]"),
    (BASE + SPACE + "[objective]\nmetric = 'eval_return'\neval_episodes = 0\n", "eval_episodes in"),
    (BASE + SPACE + "[study]\ntrials = 0\n", "trials in [study]"),
    (BASE + SPACE + "[study]\npruner = 'hyperband'\n", "pruner in [study]"),
    (BASE + SPACE + "[study]\nseeds = 1\n", "did you mean 'seed'?"),
    ("[base\n", "not valid TOML"),
])
def test_a_bad_sweep_file_is_refused_in_one_sentence_naming_it(tmp_path, text, says):
    with pytest.raises(ConfigError) as refused:
        load_sweep(sweep_file(tmp_path, text))
    message = str(refused.value)
    assert says in message and message.count("\n") == 0, message


def test_the_cli_refuses_a_bad_sweep_file_before_anything_starts(tmp_path, capsys):
    path = sweep_file(tmp_path, BASE + "[space.lr]\ntype = 'float'\nlow = 0.2\nhigh = 0.1\n")
    with pytest.raises(SystemExit) as exited:
        cli_main(["sweep", str(path), "--dir", str(tmp_path / "sweep")])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htsrl-aio: error: ") and "low below high" in lines[0]
    assert not (tmp_path / "sweep").exists()


def test_without_optuna_the_sweep_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(SystemExit):
        cli_main(["sweep", str(sweep_file(tmp_path, BASE + SPACE)), "--dir", str(tmp_path / "sweep")])
    line = capsys.readouterr().err.strip()
    assert line.startswith("htsrl-aio: error: ") and '".[sweep]"' in line and line.count("\n") == 0
    assert not (tmp_path / "sweep").exists()


def test_a_storage_url_optuna_cannot_open_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["sweep", str(sweep_file(tmp_path, BASE + SPACE)), "--storage", "nonsense", "--dir",
                  str(tmp_path / "sweep")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("htsrl-aio: error: cannot open the study database nonsense")


def test_jobs_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["sweep", str(sweep_file(tmp_path, BASE + SPACE)), "--jobs", "0", "--dir",
                  str(tmp_path / "sweep")])
    assert "--jobs must be a positive number" in capsys.readouterr().err


def _rows(returns: list[float | None]) -> list[dict]:
    return [{"update": u, "episode_return_mean": r} for u, r in enumerate(returns, 1)]


def test_a_trial_worse_than_the_median_is_pruned_and_a_better_one_is_not():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=3))
    study.add_trial(optuna.trial.create_trial(value=100.0,
                                              intermediate_values={u: 100.0 for u in (1, 2, 3, 4)}))
    objective = Objective(last_updates=2)

    worse = TrialReport(study.ask(), objective, set())
    decisions = [worse.add(row) for row in _rows([None, 20.0, 30.0, 40.0])]
    # No value before an episode ends, none pruned in the warm-up updates, then pruned at update 3.
    assert decisions == [False, False, True, True]
    assert worse.value == 35.0  # mean of its last 2 rows

    better = TrialReport(study.ask(), objective, set())
    assert not any(better.add(row) for row in _rows([150.0, 150.0, 150.0, 150.0]))


def test_a_resumed_trial_reports_only_the_updates_it_had_not_reported():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    first = TrialReport(trial, Objective(last_updates=3), set())
    for row in _rows([1.0, 2.0]):
        first.add(row)
    again = TrialReport(trial, Objective(last_updates=3), set(study.trials[0].intermediate_values))
    for row in _rows([1.0, 2.0, 3.0]):  # the resumed run's file starts again from its first row
        again.add(row)
    assert study.trials[0].intermediate_values == {1: 1.0, 2: 1.5, 3: 2.0}


def test_the_metrics_tail_yields_whole_rows_once_even_when_the_file_is_rewritten(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.new_rows() == []
    path.write_text(json.dumps({"update": 1}) + "\n" + '{"upd')  # the second row is being written
    assert [r["update"] for r in tail.new_rows()] == [1]
    with path.open("a") as f:
        f.write('ate": 2}\n')
    assert [r["update"] for r in tail.new_rows()] == [2]
    rewritten = tmp_path / "new.jsonl"  # a resumed run replaces the file with its checkpoint's rows
    rewritten.write_text("".join(json.dumps({"update": u}) + "\n" for u in (1, 2, 3)))
    rewritten.replace(path)
    assert [r["update"] for r in tail.new_rows()] == [3]


def test_toml_text_reads_back_as_the_same_config():
    values = {"env": 'a"b\\c', "hidden": (64, 64), "lr": 3e-4, "anneal_lr": False, "num_envs": 8,
              "env_kwargs": {"continuous": True, "max steps": 5}}
    assert tomllib.loads(toml_text(values)) == {**values, "hidden": [64, 64]}


def test_a_study_run_with_another_space_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(load_sweep(sweep_file(tmp_path, BASE + SPACE)), storage)
    changed = load_sweep(sweep_file(tmp_path, BASE + SPACE.replace("1e-2", "1e-1")))
    with pytest.raises(ConfigError, match="was run with another space"):
        open_study(changed, storage)
    more_trials = load_sweep(sweep_file(tmp_path, BASE + SPACE + "[study]\ntrials = 40\n"))
    open_study(more_trials, storage)  # trials, pruner and seed may change between runs


def test_a_sampled_config_that_is_refused_fails_its_trial_and_three_in_a_row_stop_the_sweep(tmp_path):
    # Every draw is refused before a process starts: 4 envs x 32 steps do not split into 3 minibatches.
    # (load_sweep refuses such a base at once, so the spec is made here.)
    spec = load_sweep(sweep_file(tmp_path, BASE + SPACE))
    spec = dataclasses.replace(spec, base={**spec.base, "minibatches": 3})
    with pytest.raises(HtsrlError, match="3 trials in a row failed, the last one with: --minibatches 3"):
        run_sweep(spec, tmp_path / "sweep", say=lambda line: None)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert not (tmp_path / "sweep" / "best.toml").exists() and not list((tmp_path / "sweep").glob("trial-*"))


def test_one_sweep_at_a_time_uses_a_sweep_directory(tmp_path):
    held = _sweep_lock(tmp_path / "sweep")
    refused = pytest.raises(ConfigError, match="is in use by another htsrl-aio sweep")
    with held, refused, _sweep_lock(tmp_path / "sweep"):
        pass


def test_how_a_trial_directory_continues(tmp_path):
    run = tmp_path / "trial"
    run.mkdir()
    assert continuation(run) == "train"  # nothing written yet
    (run / "config.json").write_text("{}")
    assert continuation(run) == "resume"  # stopped before its first update: --resume starts it again
    (run / "metrics.jsonl").write_text(json.dumps({"update": 1}) + "\n")
    assert continuation(run) == "lost"  # updates done, but no checkpoint to resume them from
    (run / "checkpoint.pt").write_bytes(b"")
    assert continuation(run) == "resume"
    (run / "summary.json").write_text("{}")
    assert continuation(run) == "finished"


def test_a_trial_that_finished_while_no_sweep_watched_is_recorded_from_its_files(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, BASE + SPACE + "[study]\ntrials = 1\n"))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = open_study(spec, f"sqlite:///{sweep / 'study.db'}")
    trial = study.ask()
    for distribution in spec.space:
        distribution.suggest(trial)
    run = (sweep / "trial-0000").resolve()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("run_dir", str(run))
    run.mkdir()
    returns = [10.0 * u for u in range(1, 13)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _rows(returns)))
    (run / "summary.json").write_text("{}")
    lines: list[str] = []
    run_sweep(spec, sweep, say=lines.append)  # no process starts: trials = 1 is reached
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert study.trials[0].value == sum(returns[-10:]) / 10  # the mean of the last 10 updates
    assert lines[0].startswith("trial 0 finished: episode_return_mean 75 ")


def _trial_dirs(sweep: Path) -> list[Path]:
    return sorted(sweep.glob("trial-*"))


@pytest.mark.slow
def test_a_four_trial_sweep_with_two_jobs_finishes_continues_without_rerunning_and_its_best_trains(
        tmp_path, capsys):
    path = sweep_file(tmp_path, BASE + SPACE + "[study]\ntrials = 4\nseed = 3\n")
    sweep = tmp_path / "sweep"
    assert cli_main(["sweep", str(path), "--jobs", "2", "--dir", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert out.count(" finished: episode_return_mean ") == 4
    assert "trial  state     episode_return_mean  lr" in out
    trials = _trial_dirs(sweep)
    assert [t.name for t in trials] == [f"trial-{n:04d}" for n in range(4)]
    finished = {t: (t / "summary.json").stat().st_mtime_ns for t in trials}

    assert cli_main(["sweep", str(path), "--jobs", "2", "--dir", str(sweep)]) == 0  # nothing left to do
    assert " finished: " not in capsys.readouterr().out
    assert {t: (t / "summary.json").stat().st_mtime_ns for t in _trial_dirs(sweep)} == finished
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4

    best = tomllib.loads((sweep / "best.toml").read_text())
    assert best["lr"] == study.best_params["lr"] and best["hidden"] == json.loads(study.best_params["hidden"])
    assert cli_main(["train", "--config", str(sweep / "best.toml"), "--logdir", str(tmp_path / "best"),
                     "--no-progress"]) == 0
    # The best trial's own run, trained again from best.toml: the same bits.
    best_run = sweep / f"trial-{study.best_trial.number:04d}"
    assert (json.loads((tmp_path / "best" / "summary.json").read_text())["final_params_sha256"]
            == json.loads((best_run / "summary.json").read_text())["final_params_sha256"])


@pytest.mark.slow
def test_the_pruner_stops_a_trial_at_its_next_swap_and_records_it_pruned(tmp_path):
    # A finished trial whose return was 1000 at every update: any CartPole run lies below that median.
    spec = load_sweep(sweep_file(tmp_path, BASE.replace("2048", "20480") + SPACE
                                 + "[study]\ntrials = 2\nstartup_trials = 1\n"))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = open_study(spec, f"sqlite:///{sweep / 'study.db'}")
    study.add_trial(optuna.trial.create_trial(
        value=1000.0, params={"lr": 1e-3, "hidden": "[16]"},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                       "hidden": optuna.distributions.CategoricalDistribution(["[16]", "[32, 32]"])},
        intermediate_values={u: 1000.0 for u in range(1, 161)}))
    lines: list[str] = []
    run_sweep(spec, sweep, say=lines.append)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    pruned = study.trials[1]
    assert lines[0].startswith(f"trial 1 pruned at update {min(pruned.intermediate_values)}:")
    run = sweep / "trial-0001"
    rows = metrics_rows(run)
    assert 0 < len(rows) < 160 and not (run / "summary.json").exists()
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)
    assert stopped["kind"] == "swap" and stopped["update"] == rows[-1]["update"]  # resumes exactly


def _processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_stopped_or_killed_sweep_stops_every_trial_at_a_swap_and_the_rerun_resumes_them(tmp_path, sig):
    # Jittered steps keep the trials going long enough for the signal to land in the middle.
    text = (BASE.replace('"CartPole-v1"', '"envs_for_tests:jitter_cartpole"').replace("2048", "6400")
            + SPACE + "[study]\ntrials = 2\n")
    path = sweep_file(tmp_path, text)
    sweep = tmp_path / "sweep"
    argv = [sys.executable, "-m", "htsrl_aio", "sweep", str(path), "--jobs", "2", "--dir", str(sweep)]
    first = sweep / "trial-0000" / "metrics.jsonl"
    code, stderr = signalled(argv, sweep, sig,
                             when=lambda: first.exists() and first.read_text().count("\n") >= 1)
    if sig == signal.SIGKILL:  # the kernel sends each trial a SIGTERM as the sweep dies
        assert code == -signal.SIGKILL
        wait_until(lambda: _processes_naming(str(sweep)) == [], HANG_S, "the trials to stop")
    else:
        assert code == 130, stderr
        assert "rerun the same command to resume them" in stderr.splitlines()[-1]
        assert _processes_naming(str(sweep)) == []  # every trial process ended with the sweep
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["RUNNING", "RUNNING"]
    stopped_at = metrics_rows(sweep / "trial-0000")[-1]["update"]
    stopped = torch.load(sweep / "trial-0000" / "checkpoint.pt", weights_only=True)
    assert stopped["kind"] == "swap" and stopped["update"] == stopped_at < 50

    tests_importable = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run(argv, capture_output=True, text=True, env=tests_importable)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    rows = metrics_rows(sweep / "trial-0000")
    assert [r["update"] for r in rows] == list(range(1, 51))
    assert rows[stopped_at]["resumed_from_update"] == stopped_at


@pytest.mark.slow
def test_the_eval_return_objective_is_the_mean_return_of_a_deterministic_evaluation(tmp_path):
    text = BASE + SPACE + "[objective]\nmetric = 'eval_return'\neval_episodes = 3\n[study]\ntrials = 1\n"
    sweep = tmp_path / "sweep"
    lines: list[str] = []
    study = run_sweep(load_sweep(sweep_file(tmp_path, text)), sweep, say=lines.append)
    expected = run_event_loop(evaluate(sweep / "trial-0000", 3, deterministic=True)).mean
    assert study.trials[0].value == pytest.approx(expected)
    assert lines[0].startswith(f"trial 0 finished: {EVAL_RETURN} ")
    # While it ran, the pruner was shown the training return.
    assert len(study.trials[0].intermediate_values) == 16
