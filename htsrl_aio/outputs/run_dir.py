"""The run directory: config.json, metrics.jsonl (one row per update), summary.json, checkpoints.

Everything that is replaced (config, summary, checkpoint) is written to a temporary file and renamed
into place, so a crash never leaves a half-written file behind (a temporary file a SIGKILL left is
removed by the next start). A run holds an exclusive lock on its directory for its whole life.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from htsrl_aio import checkpoint
from htsrl_aio.errors import ConfigError, HtsrlError

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
USER_SETTINGS = "user_settings"  # the key of config.json that holds the settings the user gave
ERROR_LOG = "error.log"
LOCK = ".lock"
TRACKERS = "trackers.json"  # which W&B and MLflow runs the run logs to (outputs/trackers.py)
# What the files a start may leave behind (checkpoint.pt, error.log, trackers.json) were when htsrl-aio
# last wrote them, so a later start removes only its own leftovers, never a file a user put there.
WRITTEN = ".written.json"
LEFTOVERS = (checkpoint.FINAL, ERROR_LOG, TRACKERS)
_TEMPORARY = ".*.tmp"  # what _atomic_write names its temporary files
# The process's umask, read once at import (os.umask can only be read by setting it, which is not
# thread-safe later, when the run's threads exist).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_ROOM = 1 << 20  # bytes a run must be able to write at start (config, first rows, events file)


class RunDirWriteError(HtsrlError):
    """A file of the run directory could not be written (disk full, no permission)."""


class CheckpointWriteError(RunDirWriteError):
    """A checkpoint could not be written (disk full, no permission); earlier checkpoints are intact."""


def default_logdir(env_name: str, algo: str, mode: str, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", env_name).strip("_")
    return Path("runs") / f"{slug}-{algo}-{mode}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._metrics = None
        self._lock: int | None = None
        self._leftovers: dict[str, list[int]] = {}  # of an earlier start, for clear_leftovers
        # The global_step of the last metrics row earlier sessions wrote, rows after the checkpoint
        # included (reopen drops those): a tracker cannot take back what it was sent up to there.
        self.written_through: int | None = None

    @classmethod
    def create(cls, path: Path) -> RunDirectory:
        """Make a fresh run directory, locked; refuse one that holds a run, so nothing is overwritten.

        A directory whose run never completed an update (a refused or interrupted start) is reused, so
        the corrected command just works; what that start left is removed by `clear_leftovers` once this
        start is accepted, and only if htsrl-aio wrote it.
        """
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {path}: {exc.strerror}.") from None
        run = cls._locked(path)
        with run._closed_on_error():
            if (path / SUMMARY).exists() or checkpoint.periodic_checkpoints(path) or read_metrics(path):
                raise ConfigError(f"run directory {path} already holds a run; pass a new --logdir or remove "
                                  "it.")
            written = run._written()
            run._leftovers = {name: identity for name, identity in written.items()
                              if name in LEFTOVERS and _identity(path / name) == identity}
            run._open_metrics("w")
        return run

    def clear_leftovers(self) -> None:
        """Remove the checkpoint.pt, error.log and trackers.json an earlier start here wrote and that
        nobody changed since (this start has not written them either); call once this start is accepted,
        so a refused one touches nothing. (A start that never completed an update leaves no tracker run
        to continue: this one starts its own.)"""
        if not self._leftovers:
            return
        for name, identity in self._leftovers.items():
            if _identity(self.path / name) == identity:
                (self.path / name).unlink(missing_ok=True)
        # What this start wrote meanwhile has another identity: it stays recorded.
        self.write_json(WRITTEN, {name: identity for name, identity in self._written().items()
                                  if identity != self._leftovers.get(name)})
        self._leftovers = {}

    def _written(self) -> dict[str, list[int]]:
        """The identities WRITTEN records; {} when there is none or it cannot be read (then nothing is
        known to be ours)."""
        try:
            written = json.loads((self.path / WRITTEN).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return written if isinstance(written, dict) else {}

    def _wrote(self, name: str) -> None:
        """Record what a leftover file is now that htsrl-aio wrote it."""
        if name in LEFTOVERS:
            self.write_json(WRITTEN, {**self._written(), name: _identity(self.path / name)})

    @classmethod
    def reopen(cls, path: Path, updates: int, config: dict[str, Any],
               may_differ: Collection[str] = ()) -> RunDirectory:
        """Continue a run from the checkpoint of update `updates` whose config is `config`, locked.

        Metrics rows after that update (written after the checkpoint) are dropped; a config.json edited
        by hand (other than the `may_differ` keys) is refused, as the run continues as configured.
        """
        run = cls._locked(path)
        with run._closed_on_error():
            if (path / SUMMARY).exists():
                raise ConfigError(f"the run in {path} already finished (summary.json exists); nothing to "
                                  "resume.")
            # config.json records where the run is and whether TensorBoard works, not those settings.
            _refuse_edited_config(path, config, {*may_differ, "logdir", "tensorboard"})
            written = read_metrics(path)
            run.written_through = written[-1].get("global_step") if written else None
            rows = [row for row in written if row["update"] <= updates]
            run.write_text(METRICS, "".join(json.dumps(row) + "\n" for row in rows))
            run._open_metrics("a")
        return run

    @classmethod
    def _locked(cls, path: Path) -> RunDirectory:
        """Take the directory's lock (held until close) and clear the temporary files a kill left."""
        run = cls(path)
        try:
            run._lock = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot write to run directory {path}: {exc.strerror}; pass a writable "
                              "--logdir.") from None
        try:
            fcntl.flock(run._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(run._lock, 32).decode(errors="replace").strip() or "unknown"
            run.close()
            raise ConfigError(f"run directory {path} is in use by another htsrl-aio run (pid {owner}); wait "
                              "for it to end, or pass another --logdir.") from None
        try:
            # A full disk is found here, before TensorBoard's writer thread dies of it with a traceback.
            os.posix_fallocate(run._lock, 0, _ROOM)
            os.ftruncate(run._lock, 0)
            os.write(run._lock, f"{os.getpid()}\n".encode())
        except OSError as exc:
            run.close()
            raise ConfigError(f"cannot write to run directory {path}: {exc.strerror}; free disk space or "
                              "pass another --logdir.") from None
        for directory in (path, path / checkpoint.CHECKPOINT_DIR):
            for stale in directory.glob(_TEMPORARY):  # no writer is left: the lock is ours
                stale.unlink(missing_ok=True)
        return run

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _open_metrics(self, mode: str) -> None:
        try:
            self._metrics = open(self.path / METRICS, mode, buffering=1, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot write to run directory {self.path}: {exc.strerror}; pass a writable "
                              "--logdir.") from None

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.write_text(name, json.dumps(data, indent=2, default=str))

    def write_text(self, name: str, text: str) -> None:
        try:
            self._atomic_write(name, lambda f: f.write(text.encode()))
        except OSError as exc:
            raise _write_failed(self.path / name, exc) from None
        self._wrote(name)

    def append_text(self, name: str, text: str) -> None:
        """Append to a log file (error.log); a log line is not worth an atomic rewrite."""
        try:
            with open(self.path / name, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise _write_failed(self.path / name, exc) from None
        self._wrote(name)

    def append_metrics(self, row: dict[str, Any]) -> None:
        assert self._metrics is not None
        try:
            self._metrics.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")
        except OSError as exc:
            raise _write_failed(self.path / METRICS, exc) from None

    def save_checkpoint(self, state: checkpoint.Checkpoint, name: str = checkpoint.FINAL) -> None:
        """Write a checkpoint atomically; on failure raise one sentence and leave older ones untouched."""
        # Serialised in memory first: torch's zip writer turns a failed write (disk full) into an
        # unrelated-looking RuntimeError, while a plain file write reports the OSError itself.
        buffer = io.BytesIO()
        torch.save(state.to_dict(), buffer)
        try:
            (self.path / name).parent.mkdir(exist_ok=True)
            self._atomic_write(name, lambda f: f.write(buffer.getbuffer()))
        except OSError as exc:
            raise _write_failed(self.path / name, exc, CheckpointWriteError) from exc
        self._wrote(name)

    def save_periodic(self, state: checkpoint.Checkpoint, update: int, keep: int) -> None:
        """Write checkpoints/update-<update>.pt, then delete all but the newest `keep` of them."""
        self.save_checkpoint(state, checkpoint.periodic_name(update))
        for old in checkpoint.periodic_checkpoints(self.path)[:-keep]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        """Close metrics.jsonl and release the lock; a row that could not be written was reported."""
        if self._metrics is not None:
            with contextlib.suppress(OSError):  # the failed row is still buffered and fails again
                self._metrics.close()
            self._metrics = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _atomic_write(self, name: str, write: Any) -> None:
        atomic_write(self.path / name, write)


def atomic_write(target: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write `target` whole or not at all: `write(f)` fills a temporary file beside it (named as
    `_TEMPORARY` says, so a start of a run in that directory removes one a kill left), which is then
    renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); the file it becomes gets the mode any other file the
        # user writes would (0644 under the usual umask), so TensorBoard or a server running as another
        # user can read config.json, checkpoints and exported policies.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def recorded_start(run: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The resolved settings and the settings the user gave that config.json recorded, for a run that
    stopped before its first update; one sentence where there is no such run to start again."""
    if not run.is_dir():
        raise ConfigError(f"run directory {run} does not exist.")
    path = run / CONFIG
    if (run / SUMMARY).exists() or read_metrics(run) or not path.exists():
        raise ConfigError(f"{run} holds no resumable checkpoint (checkpoint.pt or checkpoints/update-*.pt).")
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}), so the run that stopped before its first update "
                          "cannot start again from it; start a new run instead.") from None
    return recorded, recorded.get(USER_SETTINGS)


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (none if it has none); a cut last line is dropped with a note.

    A run killed while appending leaves its last line cut off, which is expected after a crash; a bad
    line anywhere else is damage, refused naming the file and line.
    """
    path = run / METRICS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}.") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("update"), int):
                raise ValueError("not a metrics row")
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to decode
            if number == len(lines):
                log.warning("note: the last line of %s was cut off (the run was killed while writing it); "
                            "it is ignored.", path)
                break
            raise ConfigError(f"{path}, line {number}, is not a metrics row ({exc}); fix or remove that "
                              "line.") from None
        rows.append(row)
    return rows


def _identity(path: Path) -> list[int] | None:
    """What tells a file apart from any other written there (inode, size, modification time), as JSON
    keeps it; None if there is no such file."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _refuse_edited_config(run: Path, stored: dict[str, Any], may_differ: Collection[str]) -> None:
    """Refuse a config.json whose settings differ from the checkpoint's, naming each difference."""
    path = run / CONFIG
    try:
        on_disk = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return  # nothing to contradict the checkpoint
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); restore it from the checkpoint's settings or remove "
                          "it.") from None
    expected = json.loads(json.dumps(stored, default=str))  # tuples as lists, as config.json has them
    differ = [f"{key} ({expected[key]!r} in the checkpoint, {on_disk.get(key, 'missing')!r} in config.json)"
              for key in expected if key not in may_differ and on_disk.get(key, "missing") != expected[key]]
    if differ:
        raise ConfigError(f"{path} was edited since the checkpoint: {'; '.join(differ)}. A run resumes as it "
                          "was configured: undo the edit, or start a new run with the new settings.")


def _write_failed(path: Path, exc: OSError,
                  kind: type[RunDirWriteError] = RunDirWriteError) -> RunDirWriteError:
    what = "checkpoint " if kind is CheckpointWriteError else ""
    intact = " (earlier checkpoints are intact)" if kind is CheckpointWriteError else ""
    return kind(f"could not write {what}{path}: {exc.strerror or exc}; free disk space or make the run "
                f"directory writable{intact}.")


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead, so every line parses with a strict reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
