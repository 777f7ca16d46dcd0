"""Values that would wreck training silently, and inputs that used to end in a traceback, are refused
in one sentence that names the flag (or file and line) and the fix, before any process starts or the
run directory is made."""

import dataclasses
import json
import pickle
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import envs_for_tests
import pytest

import htsrl_aio.config as htsrl_config
from htsrl_aio.cli import main as cli_main
from htsrl_aio.config import MACHINE_DEPENDENT, RESUME_OVERRIDABLE, LearnerSettings, TrainConfig, _choices
from htsrl_aio.errors import ConfigError
from htsrl_aio.presets import PRESETS


def refused(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exited:
        cli_main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htsrl-aio: error: "), lines
    return lines[0]


@pytest.mark.parametrize("flags,names", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "0"], "--lr"),
    (["--max-grad-norm", "-1"], "--max-grad-norm"), (["--max-grad-norm", "nan"], "--max-grad-norm"),
    (["--ent-coef", "nan"], "--ent-coef"), (["--ent-coef", "-0.01"], "--ent-coef"),
    (["--clip-coef", "-0.2"], "--clip-coef"), (["--clip-coef", "inf"], "--clip-coef"),
    (["--vf-coef", "inf"], "--vf-coef"), (["--gamma", "nan"], "--gamma"), (["--seed", "-1"], "--seed"),
    (["--env-timeout", "-1"], "--env-timeout"), (["--stop-timeout", "nan"], "--stop-timeout"),
])
def test_out_of_range_values_from_flags(tmp_path, capsys, flags, names):
    run = tmp_path / "run"
    line = refused(["train", *flags, "--logdir", str(run)], capsys)
    value = int(flags[1]) if flags[0] == "--seed" else float(flags[1])
    assert line.startswith(f"htsrl-aio: error: {names} must ") and line.endswith(f", got {value!r}.")
    assert not run.exists()  # refused before the run directory is made


@pytest.mark.parametrize("toml,names", [
    ("lr = nan\n", "--lr must be a finite number above 0"),
    ("max_grad_norm = -1\n", "--max-grad-norm must be a finite number above 0"),
    ("ent_coef = inf\n", "--ent-coef must be a finite number 0 or more"),
    ('algo = "dqn"\n', "algo in {path} must be one of 'ppo', 'a2c', got 'dqn'"),
])
def test_out_of_range_values_from_a_config_file(tmp_path, capsys, toml, names):
    config = tmp_path / "run.toml"
    config.write_text(toml)
    line = refused(["train", "--config", str(config), "--logdir", str(tmp_path / "run")], capsys)
    assert names.format(path=config) in line
    assert not (tmp_path / "run").exists()


def test_a_config_file_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "run.toml"
    text = "num_envs = 4  # café\n"
    config.write_bytes(text.encode("latin-1"))  # as an editor set to Latin-1 saves it
    line = refused(["train", "--config", str(config)], capsys)
    offset = text.index("é")
    assert f"--config {config} is not UTF-8 text (byte 0xe9 at offset {offset}); save it as UTF-8." in line


def test_layers_too_large_for_memory(capsys):
    line = refused(["train", "--hidden", "100000", "100000"], capsys)
    assert "--hidden 100000 100000 makes a network whose 6 copies need at least" in line
    assert "use smaller layers" in line


@pytest.mark.parametrize("env,message", [
    (":make", "--env ':make' needs a module and a callable around the colon"),
    ("{module}:", "needs a module and a callable around the colon"),
    ("{module}_syntax:make", "failed with SyntaxError: invalid syntax"),
    ("{module}_raises:make", "failed with RuntimeError: no simulator licence; fix the module"),
])
def test_env_modules_that_cannot_be_imported(tmp_path, monkeypatch, capsys, env, message):
    module = f"envmod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}_syntax.py").write_text("def make(:\n    pass\n")
    (tmp_path / f"{module}_raises.py").write_text("raise RuntimeError('no simulator licence')\n")
    monkeypatch.chdir(tmp_path)  # the current directory is importable, as for `python -m`
    line = refused(["train", "--env", env.format(module=module), "--logdir", str(tmp_path / "run")], capsys)
    assert message in line


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from htsrl_aio import TrainConfig, train

        train(TrainConfig(num_envs=2, rollout=8, total_steps=16, workers=1, progress=False,
                          logdir={str(tmp_path / 'run')!r}))
    """))
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"htsrl_aio.errors.ConfigError: {script} starts training at its top level "
                           "(line 4) without `if __name__ == \"__main__\":`"), done.stderr
    assert "died unexpectedly" not in done.stderr


@pytest.mark.parametrize("flags,sentence", [
    (["--ray-actors", "2"], "--ray-actors applies to Ray actors only; add --env-backend ray or drop it."),
    (["--env-backend", "ray", "--num-envs", "8", "--ray-actors", "9"],
     "--ray-actors 9 is more than the 8 envs they would host; use at most --ray-actors 8."),
    (["--env-backend", "ray", "--num-envs", "8", "--ray-actors", "3", "--envs-per-actor", "2"],
     "--ray-actors 3 and --envs-per-actor 2 disagree for 8 envs (4 actors of at most 2 envs); give one of "
     "them."),
    (["--env-backend", "ray", "--envs-per-actor", "0"],
     "--envs-per-actor must be a positive integer, got 0."),
])
def test_ray_flags_are_checked_before_anything_starts(tmp_path, capsys, flags, sentence):
    line = refused(["train", *flags, "--logdir", str(tmp_path / "run")], capsys)
    assert line == f"htsrl-aio: error: {sentence}"
    assert not (tmp_path / "run").exists()


def test_every_literal_field_refuses_other_values_in_one_sentence():
    hints = typing.get_type_hints(TrainConfig)
    literal = [f.name for f in dataclasses.fields(TrainConfig) if _choices(hints[f.name])]
    assert {"mode", "device", "algo", "model", "precision", "football_rewards"} <= set(literal)
    for name in literal:
        with pytest.raises(ConfigError) as refused_value:
            TrainConfig(**{name: "bogus"}).resolved()
        choices = _choices(hints[name])
        assert str(refused_value.value).startswith(f"unknown --{name.replace('_', '-')} 'bogus'; choose ")
        assert all(repr(choice) in str(refused_value.value) for choice in choices)
    with pytest.raises(ConfigError, match=r"^unknown --mode 'x'; choose 'hts' or 'sync'\.$"):
        TrainConfig(mode="x").resolved()
    with pytest.raises(ConfigError, match=r"^unknown --device 'x'; choose 'cpu', 'cuda' or 'auto'\.$"):
        TrainConfig(device="x").resolved()


@pytest.mark.parametrize("values,sentence", [
    ({"keep_checkpoints": 0}, "--keep-checkpoints must be a positive integer, got 0."),
    ({"workers": True}, "--workers must be a positive integer, got True."),
    ({"atari_noop_max": -1}, "--atari-noop-max must be 0 or a positive integer, got -1."),
    ({"gae_lambda": 1.5}, "--gae-lambda must lie in [0, 1] (usually 0.9-1), got 1.5."),
    ({"atari_sticky": 1.5},
     "--atari-sticky must lie in [0, 1] (the probability of repeating an action), got 1.5."),
    ({"frame_size": (84,)}, "--frame-size takes HEIGHT WIDTH (two positive integers), got (84,)."),
    ({"hidden": (64, 0)}, "--hidden sizes must be positive integers, got (64, 0)."),
    ({"env_kwargs": [1]}, "--env-kwargs must be KEY=VALUE pairs (a table in TOML), got [1]."),
    ({"env_backend": "ray", "ray_address": ""},
     "--ray-address takes 'auto' or a cluster address (host:port), got ''."),
    ({"vf_coef": -0.5}, "--vf-coef must be a finite number 0 or more (usually about 0.5), got -0.5."),
])
def test_each_field_check_names_the_flag_and_the_rule(values, sentence):
    with pytest.raises(ConfigError) as refused_value:
        TrainConfig(**values).resolved()
    assert str(refused_value.value) == sentence


def test_every_preset_sets_only_resolved_fields_and_gives_a_reason():
    defaults_none = {f.name for f in dataclasses.fields(TrainConfig) if f.default is None}
    for name, preset in PRESETS.items():
        assert preset.reason and set(preset.values) <= defaults_none, name
        cfg = TrainConfig(preset=name, total_steps=10**7).resolved()
        assert {key: getattr(cfg, key) for key in preset.values} == preset.values


def test_learner_settings_carry_the_resolved_values_and_pickle():
    cfg = TrainConfig(algo="a2c", seed=5, lr=3e-4, total_steps=8 * 5 * 7).resolved()
    settings = cfg.learner_settings()
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert settings.num_rollouts == 7 and (settings.algo, settings.seed, settings.lr) == ("a2c", 5, 3e-4)
    assert all(getattr(settings, f.name) == getattr(cfg, f.name) for f in dataclasses.fields(LearnerSettings))
    assert TrainConfig(algo="a2c").learner_settings().optimizer == "rmsprop"  # resolved on the way


def test_learner_settings_hold_every_setting_the_learner_reads():
    """The learner will read a LearnerSettings instead of the whole config: it must lack nothing."""
    runtime = Path(__file__).parent.parent / "htsrl_aio" / "runtime"
    source = "".join((runtime / name).read_text() for name in ("learner.py", "learner_process.py"))
    read = set(re.findall(r"\b(?:cfg|config)\.([a-z_]+)\b(?!\()", source))
    assert read and read <= {f.name for f in dataclasses.fields(LearnerSettings)}


def test_user_settings_are_the_explicit_values_ready_for_json():
    assert TrainConfig().user_settings() == {}
    given = TrainConfig(workers=3, lr=5e-4, hidden=(32,), env=envs_for_tests.unpicklable_cartpole)
    assert json.loads(json.dumps(given.user_settings())) == {
        "workers": 3, "lr": 5e-4, "hidden": [32], "env": "envs_for_tests:unpicklable_cartpole"}


def test_resume_markers():
    assert set(MACHINE_DEPENDENT) == {"workers", "engine_batch", "engine_threads", "max_batch"}
    assert set(RESUME_OVERRIDABLE) == set(MACHINE_DEPENDENT) | {
        "learner", "progress", "checkpoint_every", "keep_checkpoints", "stop_timeout", "env_timeout",
        "ray_address", "ray_actors", "envs_per_actor",
        "wandb_project", "wandb_entity", "wandb_group", "wandb_tags", "mlflow", "mlflow_uri"}


def started_on(cores: int, monkeypatch, **given) -> tuple[dict, dict]:
    """What a checkpoint of a run started on `cores` cores stores: its resolved config and user settings."""
    monkeypatch.setattr(htsrl_config, "available_cores", lambda: cores)
    resolved = TrainConfig(**given).resolved()
    stored = resolved.fitted_to_model(cnn=False, rows=resolved.num_envs)
    return stored.to_json_dict(), TrainConfig(**given).user_settings()


def test_a_run_resumed_on_a_smaller_machine_resolves_its_machine_defaults_again(monkeypatch):
    stored, user = started_on(64, monkeypatch, num_envs=16, seed=7, lr=5e-4, inference_block=4)
    assert (stored["workers"], stored["engine_batch"], stored["engine_threads"]) == (64, 8, 32)
    monkeypatch.setattr(htsrl_config, "available_cores", lambda: 2)
    resumed = TrainConfig.for_resume(stored, user, {}, "ckpt.pt")
    laptop = resumed.fitted_to_model(cnn=False, rows=16).to_json_dict()
    assert (laptop["workers"], laptop["engine_batch"], laptop["engine_threads"], laptop["max_batch"]) == (
        2, 8, 1, 16)
    unchanged = {k: v for k, v in stored.items() if k not in ("workers", "engine_threads")}
    assert {k: laptop[k] for k in unchanged} == unchanged  # seed, lr, inference_block, ...
    # A checkpoint written before user settings were stored keeps its machine's values.
    old_checkpoint = TrainConfig.for_resume(stored, None, {}, "ckpt.pt")
    assert (old_checkpoint.workers, old_checkpoint.engine_threads) == (64, 32)
    # Overrides win, and engine threads follow an overridden engine batch.
    overridden = TrainConfig.for_resume(stored, user, {"workers": 1, "engine_batch": 16}, "ckpt.pt")
    assert (overridden.workers, overridden.engine_batch, overridden.engine_threads) == (1, 16, 2)
    with pytest.raises(ConfigError, match=r"^--lr cannot change when resuming \(the run continues as "
                                          r"configured\); only workers, "):
        TrainConfig.for_resume(stored, user, {"lr": 1e-3}, "ckpt.pt")


def test_machine_settings_the_user_set_survive_a_resume_elsewhere(monkeypatch):
    stored, user = started_on(64, monkeypatch, num_envs=16, workers=3)
    monkeypatch.setattr(htsrl_config, "available_cores", lambda: 2)
    resumed = TrainConfig.for_resume(stored, user, {}, "ckpt.pt")
    assert (resumed.workers, resumed.engine_threads) == (3, 2)  # one engine (16 envs, 16-row blocks), 2 cores


def test_a_total_of_partial_rollouts_is_said_with_the_steps_trained():
    """Before, --total-steps 20000 with --preset box2d-ppo trained 16,384 steps without a word."""
    note = TrainConfig(preset="box2d-ppo", total_steps=20_000).resolved().rounded_steps_note()
    assert note == ("note: training 16,384 env steps, not --total-steps 20,000: a run trains whole rollouts "
                    "of num_envs x rollout = 16 x 256 = 4,096 steps (the values of --preset box2d-ppo); give "
                    "a multiple of 4,096 to train exactly that many.")
    mine = TrainConfig(preset="box2d-ppo", num_envs=4, total_steps=20_000).resolved().rounded_steps_note()
    assert mine is not None and "= 4 x 256 = 1,024 steps; give" in mine  # not the preset's values
    assert TrainConfig(preset="box2d-ppo", total_steps=16_384).resolved().rounded_steps_note() is None
