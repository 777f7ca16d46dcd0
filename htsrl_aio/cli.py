"""`htsrl-aio train | tune | diff | ...`: flags are generated from TrainConfig, so they never drift apart."""

from __future__ import annotations

import sys


def _interrupted_before_start(what: str) -> int:
    """Ctrl-C before `what` started anything: the one line every stop ends with, and Ctrl-C's status."""
    print(f"htsrl-aio: interrupted before {what} started; nothing was written.", file=sys.stderr)
    return 130


# The `htsrl-aio` script imports this module before main() runs: a Ctrl-C while it loads (its first
# tenth of a second) ends as one line too, not as Python's KeyboardInterrupt traceback.
try:
    import argparse
    import contextlib
    import dataclasses
    import json
    import logging
    import types
    import typing
    import warnings
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path
    from typing import Any

    from htsrl_aio.config import TrainConfig, load_config_file
    from htsrl_aio.errors import ConfigError, HtsrlError, RunInterrupted, limit_error
    from htsrl_aio.ipc.limits import ensure_address_space
    from htsrl_aio.presets import ALGO_DEFAULTS, BASE_DEFAULTS
except KeyboardInterrupt:
    raise SystemExit(_interrupted_before_start("the command")) from None


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
    for f in dataclasses.fields(TrainConfig):
        if f.name in ENV_FLAGS:  # as for train, so the env checked is the env train builds
            _add_field(check, f, hints[f.name])
    evaluate = commands.add_parser("eval", help="play a trained agent and report its mean return")
    evaluate.add_argument("path", type=Path, metavar="RUN_DIR|CHECKPOINT",
                          help="a run directory (its newest checkpoint) or a checkpoint file")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to play (default: 10)")
    evaluate.add_argument("--deterministic", action="store_true",
                          help="take the most likely action instead of sampling")
    evaluate.add_argument("--video", type=Path, default=None, metavar="OUT.mp4",
                          help="record the episodes (needs the video extra)")
    evaluate.add_argument("--seed", type=int, default=None, help="episode seeds (default: the run's seed)")
    evaluate.add_argument("--env-timeout", type=float, default=None, metavar="SECONDS",
                          help="seconds each reset or step may take, as for train (0: no limit; default: the "
                               "run's own, which defaults to "
                               f"{TrainConfig.env_timeout:g})")
    export = commands.add_parser("export", help="write a trained agent's deterministic policy as an ONNX or "
                                                "TorchScript file")
    export.add_argument("path", type=Path, metavar="RUN_DIR|CHECKPOINT",
                        help="a run directory (its newest checkpoint) or a checkpoint file")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"],
                        help="onnx (needs the export extra) or torchscript")
    export.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="the file to write (default: policy.onnx or policy.pt in the run directory)")
    export.add_argument("--env-timeout", type=float, default=None, metavar="SECONDS",
                        help="seconds each call of the env probed for its spaces may take, as for eval")
    plot = commands.add_parser("plot", help="plot learning curves and runtime health of runs")
    plot.add_argument("runs", type=Path, nargs="+", help="run directories")
    plot.add_argument("-o", "--output", type=Path, default=Path("curves.png"), help="PNG to write")
    diff = commands.add_parser("diff", help="name the first update where two runs' actions differ")
    diff.add_argument("run_a", type=Path)
    diff.add_argument("run_b", type=Path)
    commands.add_parser("clean", help="remove shared memory left in /dev/shm by killed runs")
    _add_tune(commands, hints)
    sweep = commands.add_parser("sweep", help="search hyperparameters with Optuna (needs the sweep extra)")
    sweep.add_argument("sweep_file", type=Path, metavar="SWEEP.toml",
                       help="[base] config, [space.<field>] distributions, [objective], [study] "
                            "(docs/sweeps.md)")
    sweep.add_argument("--jobs", type=int, default=1, help="trials to run at once (default: 1)")
    sweep.add_argument("--storage", default=None, metavar="URL",
                       help="Optuna database URL shared by several machines (default: "
                            "sqlite:///SWEEP_DIR/study.db)")
    sweep.add_argument("--dir", type=Path, default=None, metavar="SWEEP_DIR",
                       help="where the trials' run directories, best.toml and the default database go "
                            "(default: sweeps/<name of the sweep file>)")
    return parser


def _add_tune(commands: argparse._SubParsersAction, hints: dict[str, Any]) -> None:
    tune = commands.add_parser(
        "tune", help="measure this machine's fastest execution settings for a run (they change no bit of "
                     "its results) and write them as a --config file")
    tune.add_argument("env", help="gymnasium id or 'package.module:factory', as train's --env")
    tune.add_argument("--config", type=Path, default=None,
                      help="TOML file of TrainConfig fields defining the run, as for train")
    tune.add_argument("--seconds", type=float, default=5.0,
                      help="steady seconds the first try (the defaults) runs; every other try runs as many "
                           "updates (default: 5)")
    tune.add_argument("--output", type=Path, default=Path("tune.toml"),
                      help="the TOML file to write (default: tune.toml)")
    tune.add_argument("--tune", nargs="+", default=None, metavar="KNOB[=V1,V2,...]",
                      help="the settings to measure, each with the values to try (default: every one that "
                           "applies to the run and is not set by its flags, with a few values each)")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("env", "logdir"):  # the env is the positional; the tries write to a scratch dir
            _add_field(tune, f, hints[f.name])


# The train flags that change the env itself, which check-env takes too.
ENV_FLAGS = ("frame_size", "grayscale", "frame_stack", "atari_sticky", "atari_episodic_life",
             "atari_fire_reset", "atari_noop_max", "football_representation", "football_rewards",
             "football_players", "agent_id", "critic", "action_mask")


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    if f.default is None and f.name in ALGO_DEFAULTS["ppo"]:
        help_text += " (default: " + ", ".join(f"{a} {d[f.name]}" for a, d in ALGO_DEFAULTS.items()) + ")"
    elif f.default is None and f.name in BASE_DEFAULTS:
        help_text += f" (default: {BASE_DEFAULTS[f.name]} unless a preset sets it)"
    elif f.default is not None and f.default is not dataclasses.MISSING:  # not a default_factory's
        shown = (" ".join(map(str, f.default)) or "none") if isinstance(f.default, tuple) else f.default
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
        kwargs.update(type=typing.get_args(hint)[0], nargs="+")
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
    """Run the command `argv` (default: sys.argv) and return its exit status; wrong flags or input raise
    SystemExit(2) instead."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return _interrupted_before_start("the command")
    command = {"train": _train, "check-env": _check_env, "eval": _eval, "export": _export, "plot": _plot,
               "diff": _diff, "clean": _clean, "tune": _tune, "sweep": _sweep}[args.command]
    with _terminal_messages():
        return _exit_status(args.command, lambda: command(args))


# What Ctrl-C stopped, as the line that ends the command says.
_INTERRUPTED = {"train": "interrupted; envs stopped and shared memory freed.",
                "tune": "tune interrupted; envs stopped, shared memory freed, nothing written."}


def _exit_status(command: str, run: Callable[[], int]) -> int:
    """Every command's errors as one line on stderr and an exit status: a stop signal 128 + its number,
    wrong input (ConfigError) 2, any other HtsrlError 1, Ctrl-C 130."""
    try:
        return _limits_named(run)
    except RunInterrupted as exc:  # its sentence was logged as the run ended (training.train)
        return exc.exit_status
    except ConfigError as exc:  # before HtsrlError, which it derives from
        print(f"htsrl-aio: error: {exc}", file=sys.stderr)
        sys.exit(2)  # as argparse exits for a wrong flag, so callers of main() see both alike
    except HtsrlError as exc:
        print(f"htsrl-aio: {'run' if command == 'train' else command} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"htsrl-aio: {_INTERRUPTED.get(command, f'{command} interrupted.')}", file=sys.stderr)
        return 130


def _limits_named(run: Callable[[], int]) -> int:
    """`run()`, where running into a limit of open files, memory or processes (loading torch, say) is
    one sentence naming the limit."""
    try:
        return run()
    except (OSError, MemoryError, ImportError) as exc:
        error = limit_error(exc)
        if error is None:
            raise
        raise error from None


class _TerminalHandler(logging.Handler):
    """htsrl-aio's log records as `htsrl-aio: <message>` on the current stderr (looked up at each record,
    so a test capturing stderr sees them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"htsrl-aio: {record.getMessage()}", file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _terminal_messages() -> Iterator[None]:
    """While a command runs, the library's log records and its own warnings print as one line each."""
    logger = logging.getLogger("htsrl_aio")
    handler = _TerminalHandler()
    logger.addHandler(handler)
    python_format = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        yield
    finally:
        warnings.formatwarning = python_format
        logger.removeHandler(handler)


def _train(args: argparse.Namespace) -> int:
    ensure_address_space()  # before torch and BLAS load: some of them die without a word when they cannot
    try:
        from htsrl_aio.training import resume, train  # torch is imported only when a run starts
    except KeyboardInterrupt:  # Ctrl-C while torch loads (the first second or two): nothing started yet
        return _interrupted_before_start("the run")
    flags = _given_fields(args)
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--config cannot be combined with --resume: the run continues as configured.")
        summary = resume(args.resume, **flags)
    else:
        summary = train(_config_of(args))
    ret = summary["episode_return_mean"]
    print(f"done: {_steps_and_time(summary)}, mean return of the last 100 episodes: "
          f"{'n/a' if ret is None else f'{ret:.1f}'}; run directory: {summary['logdir']}")
    return 0


def _given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given as flags (only those given are in the namespace)."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if "env_kwargs" in flags:
        flags["env_kwargs"] = dict(flags["env_kwargs"])
    return flags


def _config_of(args: argparse.Namespace) -> TrainConfig:
    """The run of `--config FILE` and the flags given, which win over the file."""
    values = {**(load_config_file(args.config) if args.config else {}), **_given_fields(args)}
    if isinstance(values.get("hidden"), list):
        values["hidden"] = tuple(values["hidden"])
    return TrainConfig(**values)


def _tune(args: argparse.Namespace) -> int:
    ensure_address_space()  # as for train: torch and the envs load next
    try:
        from htsrl_aio.tune import format_table, parse_targets, to_toml, tune
    except KeyboardInterrupt:
        return _interrupted_before_start("tune")
    if not args.output.parent.is_dir():  # said now, not after minutes of measuring
        raise ConfigError(f"--output {args.output}: the directory {args.output.parent} does not exist; "
                          "create it or write elsewhere.")
    targets = parse_targets(args.tune) if args.tune is not None else None
    result = tune(_config_of(args), args.seconds, targets, on_try=_print_try)
    try:
        args.output.write_text(to_toml(result))
    except OSError as exc:
        raise ConfigError(f"cannot write --output {args.output}: {exc.strerror}.") from None
    print(format_table(result))
    print(f"wrote {args.output}: {result.default_sps:,.0f} steps/s with the defaults, "
          f"{result.tuned_sps:,.0f} with these settings; train with --config {args.output} and the same run "
          "flags.")
    return 0


def _print_try(settings: dict[str, Any], sps: float) -> None:
    tried = ", ".join(f"{knob.replace('_', '-')}={value}" for knob, value in settings.items()) or "defaults"
    print(f"tried {tried}: {sps:,.0f} steps/s", flush=True)


def _steps_and_time(summary: dict[str, Any]) -> str:
    """The run's steps, time and speed; after a resume, the whole run's and this session's."""
    steps, session = summary["global_step"], summary["session_steps"]
    if session == steps:
        return f"{steps} steps in {summary['wall_time_s']:.1f}s ({summary['sps']:.0f} steps/s)"
    return (f"{steps} steps in {summary['run_wall_time_s']:.1f}s over the whole run "
            f"({summary['run_sps']:.0f} steps/s; {session} of them in "
            f"{summary['wall_time_s']:.1f}s, {summary['sps']:.0f} steps/s, since resuming)")


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """htsrl-aio's own warnings as one line for the terminal; other packages' as Python shows them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return f"htsrl-aio: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def _check_env(args: argparse.Namespace) -> int:
    from htsrl_aio.backends.registry import BACKENDS, backend_name
    from htsrl_aio.envs import check_env, resolve_env
    from htsrl_aio.training import run_event_loop

    if args.steps < 1:
        raise ConfigError(f"--steps must be a positive number of random steps to take, got {args.steps}.")
    timeout = args.env_timeout
    flags = {name: getattr(args, name) for name in ENV_FLAGS if hasattr(args, name)}
    config = TrainConfig(env_kwargs=dict(args.env_kwargs), env_timeout=timeout, **flags).resolved()  # checked
    factory = resolve_env(args.env, config)
    report = run_event_loop(check_env(factory, steps=args.steps, timeout=timeout or None, isolated=True))
    for problem in report.problems:
        print(f"{report.name}: {problem}")
    for note in report.notes:
        print(f"{report.name}: note: {note}")
    if not report.ok:
        return 1
    spec = report.spec
    assert spec is not None
    where = BACKENDS[backend_name("auto", factory, spec)].runs_envs
    print(f"{report.name}: ok ({report.steps} steps; {spec.describe()}; runs {where}).")
    print(f"{report.name}: if one observation does not show all a good action needs (a single frame, "
          "hidden velocities, a local view, a cue shown earlier), train with --memory lstm.")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from htsrl_aio.evaluate import evaluate, format_result
    from htsrl_aio.training import run_event_loop

    result = run_event_loop(evaluate(args.path, args.episodes, args.deterministic, args.video, args.seed,
                                     args.env_timeout))
    print(format_result(result))
    if args.video is not None:
        print(f"wrote {args.video}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from htsrl_aio.export import export_policy
    from htsrl_aio.training import run_event_loop

    result = run_event_loop(export_policy(args.path, args.format, args.output, args.env_timeout))
    print(f"wrote {result.file} (from {result.checkpoint}): inputs {', '.join(result.inputs)}; outputs "
          f"{', '.join(result.outputs)}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from htsrl_aio.outputs.plot import plot_runs

    plot_runs(args.runs, args.output)
    print(f"wrote {args.output}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from htsrl_aio.ipc.shm import SHM_DIR, remove_stale_segments

    removed = remove_stale_segments()
    if not removed:
        print(f"nothing to clean: no shared memory of a dead htsrl-aio process in {SHM_DIR}.")
        return 0
    megabytes = sum(size for _, size in removed) / 2**20
    print(f"removed {len(removed)} shared-memory segment(s) and lock file(s) of dead htsrl-aio processes "
          f"({megabytes:.1f} MiB) from {SHM_DIR}: {', '.join(name for name, _ in removed)}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from htsrl_aio.sweep import load_sweep, require_optuna, run_sweep

    require_optuna()  # before anything else: the one sentence naming the extra
    spec = load_sweep(args.sweep_file)
    run_sweep(spec, args.dir or Path("sweeps") / args.sweep_file.stem, args.storage, args.jobs, print)
    return 0


def _diff(args: argparse.Namespace) -> int:
    from htsrl_aio.outputs.compare import first_divergence  # it loads torch

    result = first_divergence(args.run_a, args.run_b)
    print(result.message)
    return 0 if result.identical else 1


if __name__ == "__main__":
    sys.exit(main())
