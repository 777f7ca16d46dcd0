"""Start-up: a Ctrl-C while the command loads is one line; the processes a run starts load only what they
need (docs/benchmarks.md, "Start-up")."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from harness import terminal_signals

from htsrl_aio import cli

ROOT = Path(__file__).resolve().parents[1]

# Raises SIGINT as Python looks for `module`, which the command imports as it loads: a Ctrl-C at that
# instant, without timing. raise_signal runs the handler before it returns, so KeyboardInterrupt rises
# from inside the import.
_CTRL_C_AT_IMPORT = """
import signal, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
sys.argv = ["htsrl-aio", "clean"]
{entry}
"""
NOT_STARTED = "htsrl-aio: interrupted before the command started; nothing was written.\n"
_SCRIPT = "from htsrl_aio.cli import main\nsys.exit(main())"  # what the installed `htsrl-aio` script runs
_MODULE = "import runpy\nrunpy.run_module('htsrl_aio', run_name='__main__')"  # python -m htsrl_aio


def _python(code: str) -> subprocess.CompletedProcess:
    """Run `code` as a command started from a terminal: with SIGINT not ignored, even where the test
    runner was started in the background (a shell's background jobs, nohup and CI runners ignore it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=terminal_signals)


@pytest.mark.parametrize("entry", [_SCRIPT, _MODULE], ids=["htsrl-aio", "python -m htsrl_aio"])
@pytest.mark.parametrize("module", ["argparse", "htsrl_aio.config", "htsrl_aio.presets"])
def test_ctrl_c_while_the_command_loads_is_one_line(entry: str, module: str) -> None:
    result = _python(_CTRL_C_AT_IMPORT.format(module=module, entry=entry))
    assert result.stderr == NOT_STARTED
    assert result.returncode == 130


def test_ctrl_c_while_the_flags_are_read_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["clean"]) == 130
    assert capsys.readouterr().err == NOT_STARTED


def test_env_processes_load_no_torch() -> None:
    # A spawned child first imports the module of its target's wrapper (ipc.children); env workers and
    # the env check need no torch, which costs each of them 1-2 CPU seconds to load.
    result = _python("import sys, htsrl_aio.ipc.children, htsrl_aio.backends.worker, htsrl_aio.envs.check\n"
                     "print(sorted(name for name in sys.modules if name.split('.')[0] == 'torch'))")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_run_determinism_is_set_without_torch_compile() -> None:
    # torch.use_deterministic_algorithms loads torch._inductor (1.5 CPU seconds) for a flag only
    # torch.compile reads; the run's setting (main process, and the learner process alike) must not.
    from htsrl_aio.assembly import _torch_settings

    code = ("import sys, types, torch\nfrom htsrl_aio.assembly import _torch_settings\n"
            "cfg = types.SimpleNamespace(deterministic=True, torch_threads=1)\n"
            "with _torch_settings(cfg, torch.device('cpu')):\n"
            "    print(torch.are_deterministic_algorithms_enabled(),\n"
            "          'torch._inductor.config' in sys.modules)\n"
            "print(torch.are_deterministic_algorithms_enabled())")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True False\nFalse\n"
    # Where torch.compile is loaded, its flag follows too.
    import torch._inductor.config as inductor

    with _torch_settings(types.SimpleNamespace(deterministic=True, torch_threads=1), torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() and inductor.deterministic
    assert not inductor.deterministic
