"""Values that would wreck training silently, and inputs that used to end in a traceback, are refused
in one sentence that names the flag (or file and line) and the fix, before any process starts or the
run directory is made."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from htsrl_aio.cli import main as cli_main


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
