"""`htsrl-aio tune`: the fastest execution settings of one run on this machine, measured.

Only settings that cannot change a single bit of a run's results are tried (`TUNABLE`, every one a
`RESUME_OVERRIDABLE` field of TrainConfig, docs/determinism.md), so whatever tune picks, the run gives
the same `final_params_sha256` as with the defaults. The search is coordinate-wise, as PufferLib's
autotune: each knob in turn tries a few values, with the knobs before it at the best value found and
those after it at their defaults. Each try is the real Trainer: the first (the defaults) runs for
`seconds`, which fixes how many updates every other try runs, and a try scores its steady steps/s, the
env steps of the updates after warm-up over their wall-clock time (as benchmarks/throughput.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htsrl_aio.assembly import resolve_device
from htsrl_aio.backends.registry import backend_name
from htsrl_aio.config import RESUME_OVERRIDABLE, TrainConfig, available_cores, default_engine_batch
from htsrl_aio.envs import probe_env, resolve_env
from htsrl_aio.errors import ConfigError
from htsrl_aio.models import uses_cnn
from htsrl_aio.trainer import Trainer
from htsrl_aio.training import run_event_loop

# The knobs tune measures, in the order it tunes them, with the backends each one applies to (None: all).
# engine_threads comes after engine_batch because its default divides the cores among the engines.
TUNABLE: dict[str, tuple[str, ...] | None] = {
    "workers": ("process",),
    "engine_batch": ("engine",),
    "engine_threads": ("engine",),
    "max_batch": None,
    "learner": None,
}

# The first updates of a try include starting processes and the first rollout without a learner beside
# it; steady steps/s counts the updates after them.
WARMUP_UPDATES = 2
MIN_UPDATES = WARMUP_UPDATES + 2


def _flag(knob: str) -> str:
    return knob.replace("_", "-")


@dataclass
class KnobResult:
    """One knob's values in the order tried, each with its steady steps/s, and the value picked."""

    knob: str
    tried: list[tuple[Any, float]]
    picked: Any


@dataclass
class TuneResult:
    """What `tune` measured for one run, and the settings it picked (`settings`)."""

    run: dict[str, Any]  # the settings that define the run, as given
    backend: str
    machine: str
    date: str
    seconds: float
    updates: int  # updates per try
    default_sps: float
    knobs: list[KnobResult] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, Any]:
        return {k.knob: k.picked for k in self.knobs}

    @property
    def tuned_sps(self) -> float:
        """Steady steps/s of the picked settings, as their last try measured them."""
        if not self.knobs:
            return self.default_sps
        last = self.knobs[-1]
        return dict(last.tried)[last.picked]


def parse_targets(texts: Sequence[str]) -> dict[str, list[Any] | None]:
    """`--tune` words (`workers`, `max-batch=4,8`) as knob -> the values to try (None: tune's own)."""
    targets: dict[str, list[Any] | None] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        knob = name.replace("-", "_")
        if knob not in TUNABLE:
            raise ConfigError(f"--tune {name}: {_not_tunable(knob)}")
        if sep and not values:
            raise ConfigError(f"--tune {text}: give the values to try after '=', e.g. {name}=2,4.")
        targets[knob] = [_value(v) for v in values.split(",")] if sep else None
    return targets


def _not_tunable(knob: str) -> str:
    """Why tune does not measure `knob`, and what it measures."""
    tunable = ", ".join(map(_flag, TUNABLE))
    if knob not in {f.name for f in dataclasses.fields(TrainConfig)}:
        return f"not a setting; tune measures {tunable}."
    if knob not in RESUME_OVERRIDABLE:
        return (f"{_flag(knob)} can change a run's results, and tune measures only settings that cannot "
                f"({tunable}).")
    return (f"tune measures {tunable}: the settings that decide how fast a run goes without changing a bit "
            "of it.")


def _value(text: str) -> Any:
    """A value to try: an integer where it reads as one, else the text (checked later by TrainConfig)."""
    try:
        return int(text)
    except ValueError:
        return text.strip()


def tune(config: TrainConfig, seconds: float = 5.0, targets: dict[str, list[Any] | None] | None = None,
         on_try: Callable[[dict[str, Any], float], None] | None = None) -> TuneResult:
    """Measure the execution settings of the run `config` defines (`targets`: the knobs to tune and the
    values to try, None for tune's own choice; default: every knob that applies and that `config` does not
    set) and return what was measured, with the picked settings. `on_try(settings, sps)` hears each try.
    """
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"--seconds must be a finite number of seconds above 0, got {seconds!r}.")
    resolved = config.resolved()  # a bad run is one sentence before anything is measured
    (backend, cnn, rows), device = _backend_of(resolved), resolve_device(resolved.device)
    knobs = _knobs(config, targets, backend, device.type)
    for knob, values in knobs.items():
        for value in values or []:
            _check_value(config, knob, value)
    with tempfile.TemporaryDirectory(prefix="htsrl-tune-") as scratch:
        trials = _Trials(config, Path(scratch), on_try)
        default_sps = trials.calibrate(seconds)
        result = TuneResult(run=_run_settings(config), backend=backend,
                            machine=machine_description(device.type), date=datetime.date.today().isoformat(),
                            seconds=seconds, updates=trials.updates, default_sps=default_sps)
        chosen: dict[str, Any] = {}
        for knob, values in knobs.items():
            current = dataclasses.replace(config, **chosen).resolved().fitted_to_model(cnn, rows)
            tried = [(value, trials.measure({**chosen, knob: value}))
                     for value in (values or default_candidates(knob, current))]
            picked = max(tried, key=lambda pair: pair[1])[0]
            chosen[knob] = picked
            result.knobs.append(KnobResult(knob, tried, picked))
    return result


def _check_value(config: TrainConfig, knob: str, value: Any) -> None:
    """A value to try, checked as train checks it."""
    try:
        dataclasses.replace(config, **{knob: value}).resolved()
    except ConfigError as exc:
        raise ConfigError(f"--tune {_flag(knob)}={value}: {exc}") from None


def _backend_of(cfg: TrainConfig) -> tuple[str, bool, int]:
    """The backend a run of `cfg` uses, whether a CNN reads its observations, and its storage rows; an env
    that cannot load is one sentence here."""
    factory = resolve_env(cfg.env, cfg)
    factory, spec = run_event_loop(probe_env(factory, cfg.env_timeout or None))
    assert cfg.num_envs is not None
    return (backend_name(cfg.env_backend, factory, spec, cfg.env_timeout), uses_cnn(spec, cfg),
            cfg.num_envs * spec.rows_per_env)


def _knobs(config: TrainConfig, targets: dict[str, list[Any] | None] | None, backend: str,
           device: str) -> dict[str, list[Any] | None]:
    """The knobs to tune, in TUNABLE's order, each with the values given for it (None: tune's own)."""
    given = config.user_settings()
    applying = [knob for knob in TUNABLE if _applies(knob, backend, device) is None]
    if targets is None:
        targets = {knob: None for knob in applying if knob not in given}
    for knob in targets:
        if knob in given:
            raise ConfigError(f"--{_flag(knob)} {given[knob]} fixes the setting that --tune {_flag(knob)} "
                              "would measure; give one of them.")
        if (why := _applies(knob, backend, device)) is not None:
            raise ConfigError(f"--tune {_flag(knob)} {why}; drop it.")
    if not targets:
        raise ConfigError("nothing to tune: the run's flags set every execution setting that applies to it "
                          f"({', '.join(map(_flag, applying))}); drop the ones to measure.")
    return {knob: targets[knob] for knob in TUNABLE if knob in targets}


def _applies(knob: str, backend: str, device: str) -> str | None:
    """None when `knob` changes how this run executes, else the words saying why it does not."""
    backends = TUNABLE[knob]
    if backends is not None and backend not in backends:
        return (f"applies to the {' and '.join(backends)} backend, and this run's envs run on the {backend} "
                "backend")
    if knob == "learner" and device != "cpu":
        return "has no choice on a GPU, where the learner is always a thread"
    return None


def default_candidates(knob: str, cfg: TrainConfig) -> list[Any]:
    """A few values of `knob` worth trying for the resolved run `cfg`, its resolved value among them."""
    cores, envs, block = available_cores(), cfg.num_envs, cfg.inference_block
    assert envs is not None
    if knob == "workers":
        values = {cores // 2, cores, 2 * cores}
    elif knob == "engine_threads":
        values = {1, cores // 2, cores}
    elif knob in ("engine_batch", "max_batch"):  # whole inference blocks: a padded block costs a full one
        values = {block, default_engine_batch(envs, block), envs}
    else:
        return ["process", "thread"]
    values = {v for v in values if 1 <= v <= envs} | {getattr(cfg, knob)}
    return sorted(values)


class _Trials:
    """Short runs of one config with some execution settings changed, measured once each."""

    def __init__(self, config: TrainConfig, scratch: Path,
                 on_try: Callable[[dict[str, Any], float], None] | None) -> None:
        self.config = config
        self.scratch = scratch  # the tries' run directories
        self.on_try = on_try or (lambda settings, sps: None)
        self.updates = MIN_UPDATES
        self._measured: dict[str, float] = {}  # by the resolved execution settings

    def calibrate(self, seconds: float) -> float:
        """Run the defaults for `seconds` of steady updates; every later try runs as many updates."""
        rows = run_event_loop(self._run({}, None, seconds))
        self.updates = max(MIN_UPDATES, len(rows))
        return self._record({}, rows)

    def measure(self, settings: dict[str, Any]) -> float:
        key = self._key(settings)
        if key not in self._measured:
            self._record(settings, run_event_loop(self._run(settings, self.updates, None)))
        return self._measured[key]

    def _record(self, settings: dict[str, Any], rows: list[dict[str, Any]]) -> float:
        sps = steady_sps(rows)
        self._measured[self._key(settings)] = sps
        self.on_try(settings, sps)
        return sps

    def _key(self, settings: dict[str, Any]) -> str:
        cfg = dataclasses.replace(self.config, **settings).resolved()
        return json.dumps({knob: getattr(cfg, knob) for knob in TUNABLE})

    async def _run(self, settings: dict[str, Any], updates: int | None,
                   seconds: float | None) -> list[dict[str, Any]]:
        """The metrics rows of a run of `updates` updates, or of one stopped once `seconds` of updates
        after warm-up have passed (and MIN_UPDATES at least)."""
        cfg = dataclasses.replace(self.config, **settings).resolved()
        batch = cfg.num_envs * cfg.rollout
        logdir = self.scratch / f"try-{len(self._measured)}"
        run = dataclasses.replace(self.config, **settings, total_steps=batch * (updates or 10**9),
                                  logdir=str(logdir), progress=False, tensorboard=False, checkpoint_every=0)
        rows: list[dict[str, Any]] = []
        steady_from = 0.0
        async with Trainer(run) as trainer, contextlib.aclosing(trainer.updates()) as stream:
            async for row in stream:
                rows.append(row)
                if len(rows) == WARMUP_UPDATES:
                    steady_from = time.perf_counter()
                elif (seconds is not None and len(rows) >= MIN_UPDATES
                      and time.perf_counter() - steady_from >= seconds):
                    break  # leaving the Trainer stops the run
        return rows


def steady_sps(rows: list[dict[str, Any]]) -> float:
    """Env steps/s of the updates after the warm-up ones, from metrics rows (`global_step`,
    `wall_time_s`)."""
    first, last = rows[WARMUP_UPDATES - 1], rows[-1]
    return (last["global_step"] - first["global_step"]) / (last["wall_time_s"] - first["wall_time_s"])


def _run_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings the user gave that define the run (not the execution ones)."""
    given = config.user_settings()
    return {"env": config.to_json_dict()["env"],
            **{k: v for k, v in given.items() if k not in (*RESUME_OVERRIDABLE, "env", "logdir")}}


def machine_description(device: str) -> str:
    """This machine in a few words: CPU model, the cores a run may use, the GPU when one is used."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    words = f"{cpu}, {available_cores()} core(s)"
    if device == "cuda":
        import torch

        words += f", {torch.cuda.get_device_name()}"
    return words


def to_toml(result: TuneResult) -> str:
    """The picked settings as a TOML file `--config` accepts, each with the steps/s of every value tried."""
    run = ", ".join(f"{k} = {_toml_value(v)}" for k, v in result.run.items())
    lines = [
        f"# htsrl-aio tune, {result.date}, {result.machine}; {result.backend} backend.",
        f"# The run tuned for: {run}.",
        "# Execution settings only: they change no bit of a run's results (docs/determinism.md). Use with",
        "# the same run flags: htsrl-aio train --config THIS_FILE ...",
        f"# Steady env steps/s, each try {result.updates} updates (as many as the defaults ran in "
        f"{result.seconds:g} s);",
        "# coordinate-wise search (each setting in turn, the ones before it at their best).",
        f"# defaults: {result.default_sps:,.0f} steps/s; these settings: {result.tuned_sps:,.0f} steps/s.",
    ]
    for knob in result.knobs:
        tried = ", ".join(f"{_toml_value(v)}: {sps:,.0f}" for v, sps in knob.tried)
        lines += ["", f"# steps/s per value tried: {tried}", f"{knob.knob} = {_toml_value(knob.picked)}"]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML's integers and basic strings are written as JSON writes them


def format_table(result: TuneResult) -> str:
    """What was measured, one row per value tried, the picked ones marked."""
    rows = [f"{'setting':<16}{'value':>10}{'steps/s':>12}",
            f"{'(defaults)':<16}{'':>10}{result.default_sps:>12,.0f}"]
    for knob in result.knobs:
        for value, sps in knob.tried:
            mark = "  <- picked" if value == knob.picked else ""
            rows.append(f"{_flag(knob.knob):<16}{value!s:>10}{sps:>12,.0f}{mark}")
    return "\n".join(rows)
