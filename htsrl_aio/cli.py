"""`htsrl-aio train | diff`: flags are generated from TrainConfig, so the two never drift apart."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from htsrl_aio.config import TrainConfig, load_config_file
from htsrl_aio.errors import ConfigError, HtsrlError
from htsrl_aio.presets import ALGO_DEFAULTS, BASE_DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htsrl-aio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an agent")
    train.add_argument("--config", type=Path, default=None,
                       help="TOML file of TrainConfig fields (e.g. num_envs = 16); flags given here win")
    train.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR|CHECKPOINT",
                       help="continue a stopped run to its total steps, from the run directory's newest "
                            "checkpoint or the checkpoint file given (only execution flags such as "
                            "--workers may be given with it)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        _add_field(train, f, hints[f.name])
    check = commands.add_parser("check-env", help="check an env (gymnasium or AsyncEnv) in full")
    check.add_argument("env", help="gymnasium id or 'package.module:factory'")
    check.add_argument("--steps", type=int, default=500, help="random steps to take (default: 500)")
    check.add_argument("--env-kwargs", type=_key_value, nargs="+", default=[], metavar="KEY=VALUE",
                       help="keyword arguments for the env, as for train")
    check.add_argument("--env-timeout", type=float, default=TrainConfig.env_timeout, metavar="SECONDS",
                       help="seconds each reset or step may take, as for train (0: no limit; default: "
                            f"{TrainConfig.env_timeout:g})")
    evaluate = commands.add_parser("eval", help="play a trained agent and report its mean return")
    evaluate.add_argument("path", type=Path, metavar="RUN_DIR|CHECKPOINT",
                          help="a run directory (its newest checkpoint) or a checkpoint file")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to play (default: 10)")
    evaluate.add_argument("--deterministic", action="store_true",
                          help="take the most likely action instead of sampling")
    evaluate.add_argument("--video", type=Path, default=None, metavar="OUT.mp4",
                          help="record the episodes (needs the video extra)")
    evaluate.add_argument("--seed", type=int, default=None, help="episode seeds (default: the run's seed)")
    plot = commands.add_parser("plot", help="plot learning curves and runtime health of runs")
    plot.add_argument("runs", type=Path, nargs="+", help="run directories")
    plot.add_argument("-o", "--output", type=Path, default=Path("curves.png"), help="PNG to write")
    diff = commands.add_parser("diff", help="name the first update where two runs' actions differ")
    diff.add_argument("run_a", type=Path)
    diff.add_argument("run_b", type=Path)
    commands.add_parser("clean", help="remove shared memory left in /dev/shm by killed runs")
    return parser


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    if f.default is None and f.name in ALGO_DEFAULTS["ppo"]:
        help_text += " (default: " + ", ".join(f"{a} {d[f.name]}" for a, d in ALGO_DEFAULTS.items()) + ")"
    elif f.default is None and f.name in BASE_DEFAULTS:
        help_text += f" (default: {BASE_DEFAULTS[f.name]} unless a preset sets it)"
    elif f.default is not None and f.default is not dataclasses.MISSING:  # not a default_factory's
        shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        help_text += f" (default: {shown})"
    # Only flags actually given appear in the namespace, so they can override a --config file.
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is dict:
        kwargs.update(type=_key_value, nargs="+", metavar="KEY=VALUE")
    elif typing.get_origin(hint) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(hint))
    elif hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is tuple:
        kwargs.update(type=int, nargs="+")
    elif hint in (int, float):
        kwargs["type"] = hint
    parser.add_argument(flag, **kwargs)


def _key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE from the command line; VALUE is read as JSON (true, 3, [1, 2]) and else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (for example continuous=true)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "diff":
        return _diff(args.run_a, args.run_b)
    if args.command == "check-env":
        return _check_env(args.env, args.steps, dict(args.env_kwargs), args.env_timeout)
    if args.command == "plot":
        return _plot(parser, args.runs, args.output)
    if args.command == "eval":
        return _eval(parser, args)
    if args.command == "clean":
        return _clean()
    try:
        from htsrl_aio.training import run_event_loop  # torch is imported only when a run starts
    except KeyboardInterrupt:  # Ctrl-C while torch loads (the first second or two): nothing started yet
        print("htsrl-aio: interrupted before the run started; nothing was written.", file=sys.stderr)
        return 130

    warnings.formatwarning = _format_warning

    try:
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if hasattr(args, f.name)}
        if "env_kwargs" in flags:
            flags["env_kwargs"] = dict(flags["env_kwargs"])
        if args.resume is not None:
            if args.config is not None:
                raise ConfigError("--config cannot be combined with --resume: the run continues as "
                                  "configured.")
            summary = run_event_loop(_train_until_signalled(None, args.resume, flags))
        else:
            values = {**(load_config_file(args.config) if args.config else {}), **flags}
            if isinstance(values.get("hidden"), list):
                values["hidden"] = tuple(values["hidden"])
            summary = run_event_loop(_train_until_signalled(TrainConfig(**values)))
    except ConfigError as exc:
        parser.exit(2, f"htsrl-aio: error: {exc}\n")
    except HtsrlError as exc:
        print(f"htsrl-aio: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("htsrl-aio: interrupted; envs stopped and shared memory freed.", file=sys.stderr)
        return 130
    except _Terminated as exc:
        note = f"; {exc.note}" if exc.note else ""
        print(f"htsrl-aio: {exc.what}{note}; envs stopped and shared memory freed.", file=sys.stderr)
        return 128 + exc.signum
    ret = summary["episode_return_mean"]
    print(f"done: {summary['global_step']} steps in {summary['wall_time_s']:.1f}s "
          f"({summary['sps']:.0f} steps/s), mean return of the last 100 episodes: "
          f"{'n/a' if ret is None else f'{ret:.1f}'}; run directory: {summary['logdir']}")
    return 0


# Stop signals from a terminal or a supervisor: the exit status is 128 + signal.
_STOPPED_BY = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up (SIGHUP)"}


class _Terminated(Exception):
    """A stop signal arrived; the run stopped, checkpointed and cleaned up (`note` says how)."""

    def __init__(self, signum: signal.Signals, note: str) -> None:
        super().__init__(signum.name)
        self.signum = int(signum)
        self.what = _STOPPED_BY[signum]
        self.note = note


async def _train_until_signalled(config: TrainConfig | None, resume: Path | None = None,
                                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `config`, or resume from `resume`. The first stop signal ends the run at the next swap with
    a checkpoint that resumes exactly (at once if training has not started, or after --stop-timeout);
    a second one stops it at once. Either way the checkpoint and cleanup run instead of a hard exit."""
    from htsrl_aio.trainer import RunStopped, Trainer

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[signal.Signals] = []
    trainer: Trainer | None = None

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        if len(received) == 1 and trainer is not None and trainer.stop_at_next_swap():
            return
        task.cancel()

    # A signal the caller ignores stays ignored: `nohup htsrl-aio train` must survive its terminal.
    handled = [signum for signum in _STOPPED_BY if signal.getsignal(signum) is not signal.SIG_IGN]
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if config is not None:
            trainer = Trainer(config)
        else:
            assert resume is not None
            trainer = Trainer.resume(resume, **(overrides or {}))
        async with trainer:
            return await trainer.run()
    except (asyncio.CancelledError, RunStopped):
        if received:
            raise _Terminated(received[0], "" if trainer is None else trainer.stop_note) from None
        raise
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """htsrl-aio's own warnings as one line for the terminal; other packages' as Python shows them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return f"htsrl-aio: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def _check_env(env: str, steps: int, env_kwargs: dict[str, Any], timeout: float) -> int:
    from htsrl_aio.backends.registry import backend_name
    from htsrl_aio.envs import check_env, resolve_env
    from htsrl_aio.training import run_event_loop

    try:
        config = TrainConfig(env_kwargs=env_kwargs, env_timeout=timeout).resolved()  # checks the timeout
        factory = resolve_env(env, config)
        report = run_event_loop(check_env(factory, steps=steps, timeout=timeout or None))
    except ConfigError as exc:
        print(f"htsrl-aio: error: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(f"{report.name}: {problem}")
    if not report.ok:
        return 1
    spec = report.spec
    assert spec is not None
    where = {"loop": "in the event loop (AsyncEnv)", "process": "in worker processes",
             "engine": "in C++ vector engines"}[backend_name("auto", factory, spec)]
    print(f"{report.name}: ok ({report.steps} steps; observations {spec.obs.describe()}, "
          f"{spec.action.describe()}; runs {where}).")
    return 0


def _eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from htsrl_aio.evaluate import evaluate, format_result
    from htsrl_aio.training import run_event_loop

    try:
        result = run_event_loop(evaluate(args.path, args.episodes, args.deterministic, args.video, args.seed))
    except ConfigError as exc:
        parser.exit(2, f"htsrl-aio: error: {exc}\n")
    print(format_result(result))
    if args.video is not None:
        print(f"wrote {args.video}")
    return 0


def _plot(parser: argparse.ArgumentParser, runs: list[Path], output: Path) -> int:
    from htsrl_aio.outputs.plot import plot_runs

    try:
        plot_runs(runs, output)
    except ConfigError as exc:
        parser.exit(2, f"htsrl-aio: error: {exc}\n")
    print(f"wrote {output}")
    return 0


def _clean() -> int:
    from htsrl_aio.ipc.shm import SHM_DIR, remove_stale_segments

    removed = remove_stale_segments()
    if not removed:
        print(f"nothing to clean: no shared memory of a dead htsrl-aio process in {SHM_DIR}.")
        return 0
    megabytes = sum(size for _, size in removed) / 2**20
    print(f"removed {len(removed)} shared-memory segment(s) and lock file(s) of dead htsrl-aio processes "
          f"({megabytes:.1f} MiB) from {SHM_DIR}: {', '.join(name for name, _ in removed)}")
    return 0


def _diff(run_a: Path, run_b: Path) -> int:
    from htsrl_aio.outputs.compare import first_divergence  # it loads torch

    try:
        result = first_divergence(run_a, run_b)
    except (OSError, ValueError) as exc:
        print(f"htsrl-aio: error: {exc}", file=sys.stderr)
        return 2
    print(result.message)
    return 0 if result.identical else 1


if __name__ == "__main__":
    sys.exit(main())
