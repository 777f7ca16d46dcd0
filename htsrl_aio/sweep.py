"""`htsrl-aio sweep`: a hyperparameter search on Optuna, each trial an ordinary run directory.

A sweep file (TOML) names the base config (`[base]`, TrainConfig fields as `--config` takes them), a
distribution per searched field (`[space.<field>]`), the objective (`[objective]`) and the study
(`[study]`). Each trial is `htsrl-aio train --config TRIAL/config.toml --logdir TRIAL` in a process of
its own (its own session, so a Ctrl-C reaches only the sweep, which stops each trial with exactly one
SIGTERM: the run stops at its next swap with a checkpoint that resumes exactly). The parent reads each
trial's metrics.jsonl as it grows, reports the objective to Optuna and stops a trial the pruner
condemns the same way. The study lives in a database (SQLite in the sweep directory by default), so a
rerun continues it: finished trials stay finished, and a trial this sweep directory left RUNNING (the
sweep was stopped or killed) is resumed from its run directory's checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import fcntl
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from htsrl_aio import checkpoint
from htsrl_aio.config import TrainConfig, check_config_value, checked_config_values
from htsrl_aio.errors import STOPPED_BY, ConfigError, HtsrlError, RunInterrupted
from htsrl_aio.ipc import parent_death

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

TRIAL_CONFIG = "config.toml"  # base + the trial's parameters, as `--config` takes it
TRIAL_LOG = "trial.log"  # the trial process's own output
BEST = "best.toml"
# The metrics.jsonl columns to optimise, and the mean return of a deterministic evaluation of the trial's
# final policy (`htsrl-aio eval --deterministic`).
METRICS = ("episode_return_mean", "episode_length_mean", "sps")
EVAL_RETURN = "eval_return"
PRUNERS = ("median", "successive_halving", "none")
MAX_FAILURES_IN_A_ROW = 3  # then the sweep stops: the space or the base config is at fault, not one draw
# How often the parent reads the trials' growing metrics.jsonl. Only how soon a pruned trial is told to
# stop depends on it, never which trial is pruned (every row is reported in order).
POLL_S = 1.0
_SWEEP_ATTR = "htsrl_aio_sweep"  # the study's user attribute holding what its trials must share


@dataclasses.dataclass(frozen=True)
class Distribution:
    """How one TrainConfig field is searched."""

    field: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value for the field (a list choice travels through Optuna as its JSON text)."""
        if self.kind == "float":
            return trial.suggest_float(self.field, self.low, self.high, step=self.step, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return decode_choice(trial.suggest_categorical(self.field, [_encode(c) for c in self.choices]))

    def first(self) -> Any:
        """The lowest value, or the first choice."""
        return self.choices[0] if self.kind == "categorical" else self.low

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, (), False)}


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str = "episode_return_mean"
    last_updates: int = 10
    direction: Literal["maximize", "minimize"] = "maximize"
    eval_episodes: int = 10  # eval_return: the episodes of the evaluation

    @property
    def row_metric(self) -> str:
        """The metrics.jsonl column reported while a trial runs (what the pruner compares)."""
        return "episode_return_mean" if self.metric == EVAL_RETURN else self.metric

    def describe(self) -> str:
        if self.metric == EVAL_RETURN:
            return f"{EVAL_RETURN} (mean return of {self.eval_episodes} deterministic episodes)"
        return f"{self.metric} (mean of the last {self.last_updates} updates)"


@dataclasses.dataclass(frozen=True)
class StudySettings:
    name: str
    trials: int = 20
    pruner: Literal["median", "successive_halving", "none"] = "median"
    seed: int = 0
    startup_trials: int = 5  # median pruner: trials that finish before it prunes any
    warmup_updates: int = 0  # median pruner: updates of each trial it never prunes in


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    path: Path
    base: dict[str, Any]
    space: tuple[Distribution, ...]
    objective: Objective
    study: StudySettings

    def trial_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """Base settings and the trial's parameters (as Optuna stores them) as `--config` values."""
        values = {**self.base, **{name: decode_choice(value) for name, value in params.items()}}
        if isinstance(values.get("hidden"), list):
            values["hidden"] = tuple(values["hidden"])
        return values

    def shared(self) -> dict[str, Any]:
        """What every trial of a study must share: a rerun with another base, space or objective would
        mix incomparable trials in one study."""
        return _jsonable({"base": self.base, "space": [d.to_json() for d in self.space],
                          "objective": dataclasses.asdict(self.objective)})


# ----------------------------------------------------------------------------------------------------
# The sweep file


class _Table:
    """One table of the sweep file, read key by key; what is left over is refused."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table ([...] in TOML), got {data!r}.")
        self.data = dict(data)
        self.where = where
        self.known: list[str] = []

    def take(self, key: str, check: Callable[[Any], bool], rule: str, default: Any = ...) -> Any:
        self.known.append(key)
        if key not in self.data:
            if default is ...:
                raise ConfigError(f"{self.where} lacks {key} ({rule}); add it.")
            return default
        value = self.data.pop(key)
        if not check(value):
            raise ConfigError(f"{key} in {self.where} {rule}, got {value!r}.")
        return value

    def done(self) -> None:
        for key in self.data:
            close = difflib.get_close_matches(key, self.known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"it takes {', '.join(self.known)}."
            raise ConfigError(f"unknown key {key!r} in {self.where}; {hint}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """The sweep file at `path`, checked: every problem is one ConfigError sentence naming it."""
    path = Path(path)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read sweep file {path}: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"sweep file {path} is not UTF-8 text; save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep file {path} is not valid TOML: {exc}.") from None
    top = _Table(data, f"sweep file {path}")
    base = checked_config_values(dict(top.take("base", lambda v: isinstance(v, dict), "must be a table",
                                               {})), f"[base] of {path}")
    if "logdir" in base:
        raise ConfigError(f"[base] of {path} sets logdir, but each trial gets its own run directory in the "
                          "sweep directory; remove it (use --dir for the sweep's).")
    space_table = top.take("space", lambda v: isinstance(v, dict) and v != {},
                           "must hold a [space.<field>] table per searched field")
    space = tuple(_distribution(name, spec, path, base) for name, spec in space_table.items())
    objective = _objective(top.take("objective", lambda v: True, "", {}), path)
    study = _study(top.take("study", lambda v: True, "", {}), path)
    top.done()
    spec = SweepSpec(path, base, space, objective, study)
    try:  # a draw's values can only be checked as it is drawn; one draw here catches most mistakes early
        TrainConfig(**spec.trial_config({d.field: _encode(d.first()) for d in space})).resolved()
    except ConfigError as exc:
        raise ConfigError(f"[base] of {path}, with the first value of each searched field, is not a valid "
                          f"config: {exc}") from None
    return spec


def _distribution(name: str, data: Any, path: Path, base: dict[str, Any]) -> Distribution:
    where = f"[space.{name}] of {path}"
    if name not in {f.name for f in dataclasses.fields(TrainConfig)}:
        check_config_value(name, None, f"[space] of {path}")  # raises, naming the closest field
    if name in ("logdir", "env"):
        raise ConfigError(f"{name} cannot be searched ({where}): the sweep sets each trial's logdir, and "
                          "trials of different envs are not comparable; remove it.")
    if name in base:
        raise ConfigError(f"{name} is set in [base] and searched in [space.{name}] of {path}; remove one.")
    table = _Table(data, where)
    kind = table.take("type", lambda v: v in ("float", "int", "categorical"),
                      "must be 'float', 'int' or 'categorical'")
    if kind == "categorical":
        choices = table.take("choices", lambda v: isinstance(v, list) and v != [],
                             "must be a non-empty list of values")
        table.done()
        for choice in choices:
            check_config_value(name, choice, f"the choices of {where}")
        return Distribution(name, kind, choices=tuple(choices))
    number = _int if kind == "int" else _real
    rule = "must be an integer" if kind == "int" else "must be a finite number"
    low = table.take("low", number, rule)
    high = table.take("high", number, rule)
    log_scale = table.take("log", lambda v: isinstance(v, bool), "must be true or false", False)
    step = table.take("step", lambda v: number(v) and v > 0, f"{rule} above 0", None)
    table.done()
    for bound in (low, high):
        check_config_value(name, bound, f"{where} (type = {kind!r})")
    if low >= high:
        raise ConfigError(f"{where} needs low below high, got low = {low!r}, high = {high!r}.")
    if log_scale and low <= 0:
        raise ConfigError(f"{where} is log-scaled, so low must be above 0, got {low!r}.")
    if log_scale and step not in (None, 1):
        raise ConfigError(f"{where} cannot have both log = true and a step; drop one.")
    return Distribution(name, kind, low, high, step, log_scale)


def _objective(data: Any, path: Path) -> Objective:
    table = _Table(data, f"[objective] of {path}")
    metrics = (*METRICS, EVAL_RETURN)
    metric = table.take("metric", lambda v: v in metrics, f"must be one of {', '.join(map(repr, metrics))}",
                        Objective.metric)
    last = table.take("last_updates", lambda v: _int(v) and v >= 1, "must be a positive integer",
                      Objective.last_updates)
    direction = table.take("direction", lambda v: v in ("maximize", "minimize"),
                           "must be 'maximize' or 'minimize'", Objective.direction)
    episodes = table.take("eval_episodes", lambda v: _int(v) and v >= 1, "must be a positive integer",
                          Objective.eval_episodes)
    table.done()
    return Objective(metric, last, direction, episodes)


def _study(data: Any, path: Path) -> StudySettings:
    table = _Table(data, f"[study] of {path}")
    name = table.take("name", lambda v: isinstance(v, str) and v != "", "must be a non-empty string",
                      path.stem)
    trials = table.take("trials", lambda v: _int(v) and v >= 1, "must be a positive integer",
                        StudySettings.trials)
    pruner = table.take("pruner", lambda v: v in PRUNERS, f"must be one of {', '.join(map(repr, PRUNERS))}",
                        StudySettings.pruner)
    seed = table.take("seed", lambda v: _int(v) and v >= 0, "must be 0 or a positive integer",
                      StudySettings.seed)
    startup = table.take("startup_trials", lambda v: _int(v) and v >= 0, "must be 0 or a positive integer",
                         StudySettings.startup_trials)
    warmup = table.take("warmup_updates", lambda v: _int(v) and v >= 0, "must be 0 or a positive integer",
                        StudySettings.warmup_updates)
    table.done()
    return StudySettings(name, trials, pruner, seed, startup, warmup)


def _encode(choice: Any) -> Any:
    """A categorical choice as Optuna can store it: lists and tables as their JSON text."""
    return json.dumps(choice) if isinstance(choice, (list, dict)) else choice


def decode_choice(value: Any) -> Any:
    """The inverse of `_encode` (other strings pass as they are)."""
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values))


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_text(values: dict[str, Any]) -> str:
    """`values` (TrainConfig fields from TOML, so strings, numbers, booleans, lists and tables) as TOML."""
    return "".join(f"{_toml_key(key)} = {_toml_value(value)}\n" for key, value in values.items())


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


# ----------------------------------------------------------------------------------------------------
# The study


def require_optuna() -> None:
    """Refuse, before anything starts, a sweep without Optuna installed."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError('htsrl-aio sweep needs Optuna, which the sweep extra installs: pip install '
                          '"htsrl-aio[sweep]" (pip install -e ".[sweep]" in a checkout).') from None


def open_study(spec: SweepSpec, storage: str) -> optuna.Study:
    """The study of `spec` in `storage`, created or continued; one whose trials were made with another
    base config, space or objective is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep says what happened, once
    try:
        study = optuna.create_study(storage=storage, study_name=spec.study.name,
                                    direction=spec.objective.direction, load_if_exists=True,
                                    pruner=_pruner(spec.study))
    except Exception as exc:  # SQLAlchemy's and the drivers' many: a bad URL, no driver, no server
        reason = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot open the study database {storage}: {reason}; pass a database URL Optuna "
                          "takes (sqlite:///path.db, postgresql://..., mysql://...).") from None
    shared = spec.shared()
    recorded = study.user_attrs.get(_SWEEP_ATTR)
    if recorded is None:
        study.set_user_attr(_SWEEP_ATTR, shared)
    elif recorded != shared:
        changed = [name for name in shared if recorded.get(name) != shared[name]]
        raise ConfigError(f"study {spec.study.name!r} in {storage} was run with another "
                          f"{' and '.join(changed)} than {spec.path} gives now; restore them, or start a new "
                          "study ([study] name or another --dir).")
    if study.direction.name.lower() != spec.objective.direction:
        raise ConfigError(f"study {spec.study.name!r} in {storage} was created to "
                          f"{study.direction.name.lower()}; set direction accordingly or start a new study.")
    # Seeded, and offset by the trials so far, so a continued study does not draw its first ones again.
    study.sampler = optuna.samplers.TPESampler(seed=spec.study.seed + len(study.trials))
    return study


def _pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    import optuna

    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                           n_warmup_steps=settings.warmup_updates)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


class TrialReport:
    """Feeds one trial's metrics rows to Optuna: the objective so far at each update (the mean of the
    metric over its last `last_updates` rows that have it), and whether the pruner stops the trial."""

    def __init__(self, trial: optuna.Trial, objective: Objective, reported: set[int]) -> None:
        self.trial = trial
        self.objective = objective
        self._reported = set(reported)  # updates a stopped session reported already
        self._window: deque[float] = deque(maxlen=objective.last_updates)
        self.value: float | None = None

    def add(self, row: dict[str, Any]) -> bool:
        """Take the next row; True when the pruner says the trial should stop."""
        metric = row.get(self.objective.row_metric)
        if metric is None:  # no episode has ended yet
            return False
        self._window.append(float(metric))
        self.value = sum(self._window) / len(self._window)
        update = row["update"]
        if update not in self._reported:
            self.trial.report(self.value, update)
            self._reported.add(update)
        return bool(self.trial.should_prune())  # numpy's bool, from some pruners


class MetricsTail:
    """The rows a run appends to its metrics.jsonl, each once, in order. A resumed run rewrites the file
    to the rows of its checkpoint: rows of updates already read are skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""
        self._last_update = 0

    def new_rows(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != self._inode:  # a new file (the resumed run's): read it from the start
                    self._inode, self._offset, self._partial = inode, 0, b""
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        rows = []
        for line in lines:
            if line.strip():
                row = json.loads(line)
                if row["update"] > self._last_update:
                    rows.append(row)
                    self._last_update = row["update"]
        return rows


# ----------------------------------------------------------------------------------------------------
# Running the trials

# How a trial's run directory continues: a fresh start, a resume from its checkpoint, a run that
# finished while no sweep watched it, or one killed before any checkpoint (it cannot be continued).
Continuation = Literal["train", "resume", "finished", "lost"]


def continuation(run_dir: Path) -> Continuation:
    from htsrl_aio.outputs.run_dir import CONFIG, SUMMARY, read_metrics

    if (run_dir / SUMMARY).exists():
        return "finished"
    if (run_dir / checkpoint.FINAL).exists() or checkpoint.periodic_checkpoints(run_dir):
        return "resume"
    if read_metrics(run_dir):
        return "lost"
    # Stopped before its first update: `--resume` starts it again from the settings config.json recorded.
    return "resume" if (run_dir / CONFIG).exists() else "train"


@dataclasses.dataclass
class _Job:
    trial: optuna.Trial
    run_dir: Path
    how: Continuation


class Sweep:
    """Runs a study's trials, `jobs` at a time, as `htsrl-aio train` processes; `say` gets a line for
    each trial that ends."""

    def __init__(self, spec: SweepSpec, study: optuna.Study, directory: Path, jobs: int,
                 say: Callable[[str], None]) -> None:
        self.spec = spec
        self.study = study
        self.directory = directory.resolve()
        self.jobs = jobs
        self.say = say
        self.host = socket.gethostname()
        self.received: list[int] = []
        self.stopped: list[str] = []  # run directories of the trials a stop signal left to resume
        self.failures_in_a_row = 0
        self.last_failure = ""
        self._processes: set[asyncio.subprocess.Process] = set()
        self._orphans = [t for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),))
                         if t.user_attrs.get("host") == self.host
                         and t.user_attrs.get("run_dir") == str(self.trial_dir(t.number))]

    def trial_dir(self, number: int) -> Path:
        return self.directory / f"trial-{number:04d}"

    async def run(self) -> None:
        """Run trials until the study has its trials, a stop signal came, or too many failed in a row."""
        running: set[asyncio.Task[None]] = set()
        with self._stop_signals():
            try:
                while True:
                    while len(running) < self.jobs and not self.received:
                        job = self._next_job()
                        if job is None:
                            break
                        running.add(asyncio.create_task(self._run(job)))
                    if not running:
                        break
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            finally:  # each task stops its trial cleanly as it is cancelled
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
        if self.received:
            note = (f"{len(self.stopped)} running trial(s) stopped with checkpoints that resume exactly "
                    f"({', '.join(self.stopped)}); rerun the same command to resume them"
                    if self.stopped else "no trial was running")
            raise RunInterrupted(self.received[0], note)
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise HtsrlError(f"{self.failures_in_a_row} trials in a row failed, the last one with: "
                             f"{self.last_failure} Fix the sweep file's [base] or [space] and rerun.")

    def _next_job(self) -> _Job | None:
        while self._orphans:
            frozen = self._orphans.pop(0)
            # Optuna has no public way back to a RUNNING trial by number; its constructor is that way.
            trial = _optuna().trial.Trial(self.study, frozen._trial_id)
            run_dir = self.trial_dir(frozen.number)
            how = continuation(run_dir)
            if how != "lost":
                if how == "train":
                    self._write_trial_config(trial, run_dir)
                return _Job(trial, run_dir, how)
            self._fail(trial, f"{run_dir} was killed before its first checkpoint, so it cannot be "
                              "resumed", counts=False)
        trials = self.study.get_trials(deepcopy=False)
        taken = sum(t.state.name in ("COMPLETE", "PRUNED", "RUNNING") for t in trials)
        if taken >= self.spec.study.trials or self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            return None
        trial = self.study.ask()
        for distribution in self.spec.space:
            distribution.suggest(trial)
        run_dir = self.trial_dir(trial.number)
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            TrainConfig(**self.spec.trial_config(trial.params)).resolved()
        except ConfigError as exc:
            self._fail(trial, str(exc))
            return self._next_job()
        self._write_trial_config(trial, run_dir)
        return _Job(trial, run_dir, "train")

    def _write_trial_config(self, trial: optuna.Trial, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        params = ", ".join(f"{k} = {_toml_value(decode_choice(v))}" for k, v in trial.params.items())
        (run_dir / TRIAL_CONFIG).write_text(
            f"# trial {trial.number} of sweep {self.spec.study.name!r}: {params}\n"
            + toml_text(self.spec.trial_config(trial.params)), encoding="utf-8")

    async def _run(self, job: _Job) -> None:
        """Run one trial's process to its end, reporting its rows as they come, and record how it ended."""
        from htsrl_aio.outputs.run_dir import METRICS as METRICS_FILE

        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == job.trial.number)
        report = TrialReport(job.trial, self.spec.objective, set(frozen.intermediate_values))
        tail = MetricsTail(job.run_dir / METRICS_FILE)
        if job.how == "finished":
            for row in tail.new_rows():
                report.add(row)
            await self._record(job, 0, report, pruned_at=None)
            return
        process = await self._start(job)
        pruned_at: int | None = None
        try:
            exited = asyncio.ensure_future(process.wait())
            while True:
                done, _ = await asyncio.wait({exited}, timeout=POLL_S)
                for row in tail.new_rows():
                    if pruned_at is None and report.add(row) and not self.received:
                        pruned_at = row["update"]
                        process.send_signal(signal.SIGTERM)  # stops at its next swap, with a checkpoint
                if done:
                    break
        finally:
            if process.returncode is None:  # the sweep itself failed or was cancelled: stop it cleanly
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                await asyncio.shield(process.wait())
            self._processes.discard(process)
        await self._record(job, process.returncode, report, pruned_at)

    async def _start(self, job: _Job) -> asyncio.subprocess.Process:
        argv = [sys.executable, "-m", "htsrl_aio", "train", "--no-progress"]
        if job.how == "resume":
            argv += ["--resume", str(job.run_dir)]
        else:
            argv += ["--config", str(job.run_dir / TRIAL_CONFIG), "--logdir", str(job.run_dir)]
        with open(job.run_dir / TRIAL_LOG, "ab") as output:
            output.write(f"$ {' '.join(argv)}\n".encode())
            output.flush()
            # A session of its own: a Ctrl-C at the terminal reaches the sweep only, which then sends one
            # SIGTERM (a second signal would stop the run at once, without a checkpoint of its swap). The
            # guard sends that one SIGTERM if the sweep dies (SIGKILL, out of memory) instead.
            process = await asyncio.create_subprocess_exec(
                *parent_death.command(os.getpid(), argv), stdin=asyncio.subprocess.DEVNULL, stdout=output,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        self._processes.add(process)
        if self.received:  # the signal came while it started
            process.send_signal(signal.SIGTERM)
        return process

    async def _record(self, job: _Job, code: int | None, report: TrialReport, pruned_at: int | None) -> None:
        """Tell Optuna how the trial ended (a trial a stop signal ended stays RUNNING, to be resumed)."""
        number = job.trial.number
        if code == 0 and pruned_at is None and self.spec.objective.metric == EVAL_RETURN:
            try:
                report.value = await self._evaluate(job.run_dir)
            except HtsrlError as exc:
                self._fail(job.trial, f"evaluating {job.run_dir} failed: {exc}")
                return
        if pruned_at is not None:
            self.study.tell(job.trial, state=_state("PRUNED"))
            self.failures_in_a_row = 0
            self.say(f"trial {number} pruned at update {pruned_at}: {self.spec.objective.metric} "
                     f"{report.value:.4g} ({_params_text(job.trial.params)})")
        elif code == 0 and report.value is not None:
            self.study.tell(job.trial, report.value)
            self.failures_in_a_row = 0
            self.say(f"trial {number} finished: {self.spec.objective.metric} {report.value:.4g} "
                     f"({_params_text(job.trial.params)})")
        elif code == 0:
            self._fail(job.trial, f"no episode ended in {job.run_dir}, so it has no "
                                  f"{self.spec.objective.row_metric}; give trials more --total-steps")
        elif self.received and code in (128 + signal.SIGTERM, -signal.SIGTERM):
            self.stopped.append(job.run_dir.name)
        else:
            self._fail(job.trial, _last_error(job.run_dir / TRIAL_LOG, code))

    async def _evaluate(self, run_dir: Path) -> float:
        from htsrl_aio.evaluate import evaluate  # torch loads only for an eval objective

        result = await evaluate(run_dir, self.spec.objective.eval_episodes, deterministic=True)
        return float(result.mean)

    def _fail(self, trial: optuna.Trial, reason: str, *, counts: bool = True) -> None:
        trial.set_user_attr("error", reason)
        self.study.tell(trial, state=_state("FAIL"))
        if counts:
            self.failures_in_a_row += 1
            self.last_failure = reason.rstrip(".") + "."
        log.warning("trial %d failed: %s", trial.number, reason.rstrip("."))

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """While trials run, SIGINT, SIGTERM and SIGHUP stop each one at its next swap (one SIGTERM per
        signal: a second stops them at once). A signal the process ignores stays ignored (`nohup`)."""
        loop = asyncio.get_running_loop()
        replaced: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOPPED_BY:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:
                    replaced[signum] = previous
                    loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum, previous in replaced.items():
                loop.remove_signal_handler(signum)
                if previous is not None:
                    signal.signal(signum, previous)

    def _on_signal(self, signum: int) -> None:
        if not self.received:
            self.say(f"stopping {len(self._processes)} running trial(s) at their next swap...")
        self.received.append(signum)
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)


def _last_error(log_path: Path, code: int | None) -> str:
    """The trial's own one-line error (its CLI prints `htsrl-aio: ...`), or its exit status."""
    with contextlib.suppress(OSError):
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.startswith("htsrl-aio:")]
        if lines:
            return lines[-1].removeprefix("htsrl-aio:").strip() + f" (see {log_path})"
    return f"its process exited with status {code} (see {log_path})"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={_format(decode_choice(value))}" for name, value in params.items())


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _optuna() -> Any:
    import optuna

    return optuna


def _state(name: str) -> Any:
    return _optuna().trial.TrialState[name]


# ----------------------------------------------------------------------------------------------------
# Results


def results_table(study: optuna.Study, spec: SweepSpec) -> str:
    """Every trial of the study: number, state, objective and parameters, aligned in columns."""
    names = [d.field for d in spec.space]
    header = ["trial", "state", spec.objective.metric, *names]
    rows = [[str(t.number), t.state.name, "" if t.value is None else f"{t.value:.4g}",
             *(_format(decode_choice(t.params[n])) if n in t.params else "" for n in names)]
            for t in study.get_trials(deepcopy=False)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def write_best(study: optuna.Study, spec: SweepSpec, directory: Path) -> Path | None:
    """BEST in `directory`: the base config and the best finished trial's parameters, as `--config`
    takes them; None while no trial has finished."""
    finished = study.get_trials(deepcopy=False, states=(_state("COMPLETE"),))
    if not finished:
        return None
    best = study.best_trial
    path = directory / BEST
    path.write_text(f"# best of {len(finished)} finished trials of sweep {spec.study.name!r}: trial "
                    f"{best.number} ({directory / f'trial-{best.number:04d}'}), {spec.objective.describe()} "
                    f"= {best.value:.6g}\n" + toml_text(spec.trial_config(best.params)), encoding="utf-8")
    return path


@contextlib.contextmanager
def _sweep_lock(directory: Path) -> Iterator[None]:
    """One sweep at a time per sweep directory: a RUNNING trial recorded there is then an orphan."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot use sweep directory {directory}: {exc.strerror}; pass a writable "
                          "--dir.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"sweep directory {directory} is in use by another htsrl-aio sweep (pid "
                              f"{owner}); wait for it to end, or pass another --dir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def run_sweep(spec: SweepSpec, directory: Path, storage: str | None = None, jobs: int = 1,
              say: Callable[[str], None] = log.info) -> optuna.Study:
    """Run (or continue) the sweep `spec` in `directory`, `jobs` trials at a time; say each trial's end,
    then the table of every trial, and write BEST. A stop signal stops every running trial at its next
    swap and raises RunInterrupted (after the table)."""
    require_optuna()
    if not (_int(jobs) and jobs >= 1):
        raise ConfigError(f"--jobs must be a positive number of trials to run at once, got {jobs!r}.")
    with _sweep_lock(directory):
        storage = storage or f"sqlite:///{(directory / 'study.db').resolve()}"
        study = open_study(spec, storage)
        sweep = Sweep(spec, study, directory, jobs, say)
        try:
            asyncio.run(sweep.run())
        except RunInterrupted as exc:
            log.warning("%s", exc)
            raise
        finally:
            say(results_table(study, spec))
            best = write_best(study, spec, directory)
            if best is not None:
                say(f"best config: {best} (htsrl-aio train --config {best})")
    return study
