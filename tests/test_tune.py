"""`htsrl-aio tune`: it measures only settings that change no bit, and a run with what it writes gives the
bits of a run with the defaults."""

import json

import pytest

from htsrl_aio import TrainConfig
from htsrl_aio.cli import main as cli_main
from htsrl_aio.config import RESUME_OVERRIDABLE, available_cores, load_config_file
from htsrl_aio.tune import TUNABLE, WARMUP_UPDATES, KnobResult, TuneResult, to_toml, tune

RUN = ["--num-envs", "4", "--rollout", "16"]


def test_tune_measures_only_settings_a_resumed_run_may_change_which_change_no_bit():
    assert set(TUNABLE) <= set(RESUME_OVERRIDABLE)


def test_the_file_tune_writes_holds_only_settings_that_change_no_bit(tmp_path):
    values = {"workers": 3, "engine_batch": 8, "engine_threads": 2, "max_batch": 4, "learner": "thread"}
    result = TuneResult(run={"env": "CartPole-v1", "num_envs": 8}, backend="process",
                        machine="a CPU, 2 core(s)", date="2026-12-05", seconds=1.0, updates=6,
                        default_sps=1000.0,
                        knobs=[KnobResult(knob, [(value, 1500.0), ("other", 900.0)], value)
                               for knob, value in values.items()])
    text = to_toml(result)
    path = tmp_path / "tune.toml"
    path.write_text(text)
    written = load_config_file(path)  # as --config reads it
    assert set(written) <= set(RESUME_OVERRIDABLE)
    assert written == values
    for knob, value in values.items():  # each setting with the steps/s of every value tried above it
        assert f"# steps/s per value tried: {json.dumps(value)}: 1,500, \"other\": 900\n{knob} = " in text


def test_the_search_is_coordinate_wise_and_picks_the_fastest_value(monkeypatch):
    """With measured speeds faked, each knob keeps its fastest value and the next knob is tried with it."""
    seen: list[dict] = []

    async def fake_run(self, settings, updates, seconds):
        seen.append(settings)
        sps = 100 * settings.get("workers", 0) + 10 * settings.get("max_batch", 0)
        return [{"global_step": step * sps, "wall_time_s": float(step)} for step in range(WARMUP_UPDATES + 3)]

    monkeypatch.setattr("htsrl_aio.tune._Trials._run", fake_run)
    few, more = available_cores() + 1, available_cores() + 2  # neither is the default
    result = tune(TrainConfig(num_envs=4, rollout=16), 1.0, {"workers": [few, more], "max_batch": [2, 3]})
    assert seen == [{}, {"workers": few}, {"workers": more}, {"workers": more, "max_batch": 2},
                    {"workers": more, "max_batch": 3}]
    assert result.settings == {"workers": more, "max_batch": 3}
    assert result.default_sps == 0 and result.tuned_sps == 100 * more + 30


@pytest.mark.parametrize("argv,message", [
    (["NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
    (["CartPole-v1", "--tune", "lr"], "--tune lr: lr can change a run's results"),
    (["CartPole-v1", "--tune", "torch-threads=2"], "--tune torch-threads: torch-threads can change"),
    (["CartPole-v1", "--tune", "progress"], "--tune progress: tune measures workers,"),
    (["CartPole-v1", "--tune", "engine-batch"], "--tune engine-batch applies to the engine backend, and "
                                                "this run's envs run on the process backend; drop it."),
    (["CartPole-v1", "--workers", "2", "--tune", "workers"], "--workers 2 fixes the setting"),
    (["CartPole-v1", "--tune", "workers=2,0"], "--tune workers=0: --workers must be a positive integer"),
    (["CartPole-v1", "--seconds", "0"], "--seconds must be a finite number of seconds above 0"),
    (["CartPole-v1", "--output", "no/such/dir/tune.toml"], "the directory no/such/dir does not exist"),
])
def test_bad_input_is_one_sentence(tmp_path, capsys, monkeypatch, no_leaks, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["tune", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("htsrl-aio: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "tune.toml").exists()


@pytest.mark.slow
def test_a_run_with_the_settings_tune_picked_has_the_bits_of_a_run_with_the_defaults(tmp_path, no_leaks):
    """THE promise. Each setting is given one value to try, which differs from its default (workers: this
    machine's cores; max-batch: all envs; learner: process), so a setting that changed bits would show.
    (How tune picks among several values: test_the_search_is_coordinate_wise_and_picks_the_fastest_value.)
    """
    forced = {"workers": 3 if available_cores() != 3 else 1, "max_batch": 3, "learner": "thread"}
    output = tmp_path / "tune.toml"
    assert cli_main(["tune", "CartPole-v1", *RUN, "--seconds", "0.2", "--output", str(output), "--tune",
                     *(f"{knob}={value}" for knob, value in forced.items())]) == 0
    assert load_config_file(output) == forced
    runs = {"defaults": [], "tuned": ["--config", str(output)]}
    for name, extra in runs.items():
        assert cli_main(["train", *extra, *RUN, "--total-steps", str(4 * 16 * 4), "--logdir",
                         str(tmp_path / name), "--no-progress", "--no-tensorboard"]) == 0
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert {knob: config[knob] for knob in forced} == forced
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in runs]
    assert summaries[0]["final_params_sha256"] == summaries[1]["final_params_sha256"]
    actions = [[json.loads(line)["actions_sha256"] for line in (tmp_path / name / "metrics.jsonl").open()]
               for name in runs]
    assert actions[0] == actions[1]
