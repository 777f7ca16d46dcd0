"""`train()` and `resume()` own the stop signals as `htsrl-aio train` does: a script that calls train()
and is sent SIGTERM or SIGHUP stops with one sentence, status 128 + the signal, and a checkpoint that
`resume()` continues bit-identically; `handle_signals=False` leaves the signal to its default. Every CLI
command maps its errors to one line and an exit status the same way."""

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from harness import metrics_rows, signalled
from training_script import SETTINGS

from htsrl_aio import EnvError, RunInterrupted, TrainConfig, resume, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.training import run_event_loop, train_async

SCRIPT = [sys.executable, str(Path(__file__).parent / "training_script.py")]


def _keep_handler(signum: int, frame: object) -> None:
    """A handler of the caller's own, which train() must put back."""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signalled_script_says_why_exits_128_plus_the_signal_and_resumes_bit_identically(tmp_path, sig):
    previous = signal.signal(sig, _keep_handler)
    try:
        full = train(TrainConfig(**SETTINGS, logdir=str(tmp_path / "full")))
        assert signal.getsignal(sig) is _keep_handler  # the caller's handler is back after the run
    finally:
        signal.signal(sig, previous)

    run = tmp_path / "stopped"
    code, stderr = signalled([*SCRIPT, str(run), "handled"], run, sig, group=True)
    assert code == 128 + sig, stderr
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)
    update = stopped["update"]
    assert stopped["kind"] == "swap" and 0 < update < full["updates"], "the signal came too late"
    what = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up (SIGHUP)"}[sig]
    # One sentence, no traceback: the script does not catch RunInterrupted, a SystemExit.
    assert stderr == (f"{what}; stopped at the swap after update {update} with a checkpoint that resumes "
                      f"exactly (checkpoints/update-{update:07d}.pt); envs stopped and shared memory "
                      "freed.\n")

    resumed = resume(run)
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert [r["update"] for r in metrics_rows(run)] == list(range(1, full["updates"] + 1))


def test_with_handle_signals_false_the_default_action_of_the_signal_applies(tmp_path):
    run = tmp_path / "run"
    code, stderr = signalled([*SCRIPT, str(run), "unhandled"], run, signal.SIGTERM)
    assert code == -signal.SIGTERM, stderr  # killed by it, as the caller's own handling chose
    assert not (run / "checkpoint.pt").exists()


def test_a_signal_before_training_started_cancels_at_once(tmp_path, no_leaks):
    run = tmp_path / "run"
    config = TrainConfig(**{**SETTINGS, "logdir": str(run)})
    before = signal.getsignal(signal.SIGTERM)

    async def signalled_during_start_up() -> RunInterrupted:
        starting = asyncio.ensure_future(train_async(config, handle_signals=True))
        await asyncio.sleep(0)  # its handlers are installed and the set-up has begun
        assert signal.getsignal(signal.SIGTERM) != before, "unhandled, SIGTERM would end the test process"
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(RunInterrupted) as stopped:
            await starting
        return stopped.value

    stopped = run_event_loop(signalled_during_start_up())
    assert (stopped.signum, stopped.exit_status, stopped.note) == (signal.SIGTERM, 143, "")
    assert str(stopped) == "terminated; envs stopped and shared memory freed."
    assert not (run / "metrics.jsonl").exists()
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("command", ["eval", "check-env"])
def test_ctrl_c_in_eval_and_check_env_is_one_line_and_130(tmp_path, monkeypatch, capsys, command):
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    if command == "eval":
        monkeypatch.setattr("htsrl_aio.evaluate.evaluate", interrupted)
        argv = ["eval", str(tmp_path)]
    else:
        monkeypatch.setattr("htsrl_aio.envs.check_env", interrupted)
        argv = ["check-env", "CartPole-v1"]
    try:
        code = cli_main(argv)
    except KeyboardInterrupt:  # caught here: escaping, it would stop the whole test session
        pytest.fail(f"Ctrl-C in {command} escaped as a traceback")
    assert code == 130
    assert capsys.readouterr().err == f"htsrl-aio: {command} interrupted.\n"


def test_a_failure_other_than_wrong_input_is_one_line_naming_the_command_and_1(tmp_path, monkeypatch, capsys):
    def failing(*args: object, **kwargs: object) -> None:
        raise EnvError("env 0 of 'CartPole-v1' failed: RuntimeError: boom")

    monkeypatch.setattr("htsrl_aio.evaluate.evaluate", failing)
    assert cli_main(["eval", str(tmp_path)]) == 1
    assert capsys.readouterr().err == ("htsrl-aio: eval failed: env 0 of 'CartPole-v1' failed: RuntimeError: "
                                       "boom\n")


def test_the_cli_prints_the_library_log_as_one_line_each_while_it_runs(tmp_path, monkeypatch, capsys):
    logger = logging.getLogger("htsrl_aio")
    handlers = list(logger.handlers)

    def restart_logged(runs: list[Path], output: Path) -> None:
        # As the trainer logs an env restart, on the package's logger.
        logger.warning("env 3 failed and was re-created: RuntimeError: boom")

    monkeypatch.setattr("htsrl_aio.outputs.plot.plot_runs", restart_logged)
    assert cli_main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 0
    assert capsys.readouterr().err == "htsrl-aio: env 3 failed and was re-created: RuntimeError: boom\n"
    assert logger.handlers == handlers  # nothing left behind for the host of a later call


@pytest.mark.parametrize("summary", ["{not json", '{"update": 3}', "[]"])
def test_diff_of_a_damaged_or_foreign_summary_is_one_sentence_and_2(tmp_path, capsys, summary):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"update": 1, "actions_sha256": "ab"}\n')
        runs.append(str(run))
    (tmp_path / "b" / "summary.json").write_text(summary)
    with pytest.raises(SystemExit) as exited:
        cli_main(["diff", *runs])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"htsrl-aio: error: {tmp_path / 'b' / 'summary.json'} is not a readable htsrl-aio "
                          "summary") and err.count("\n") == 1, err
