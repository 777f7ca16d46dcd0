"""Errors that end a run with one sentence for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

import errno
import signal


class HtsrlError(RuntimeError):
    """Base for failures the user can act on; the message names the problem and the fix."""

    details: str = ""  # a traceback or other detail for the run's log file, not for the terminal


class ConfigError(HtsrlError, ValueError):
    """A configuration value or an input is wrong; the message says which and how to fix it."""


class EnvError(HtsrlError):
    """An env raised, returned something malformed, or its worker process died."""


class TrainingDiverged(HtsrlError):
    """A loss or a parameter became NaN or Inf; the update that did it is named."""


# The stop signals, as the sentence that ends a run names them.
STOPPED_BY = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up (SIGHUP)"}


class RunInterrupted(HtsrlError):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) ended the run, which stopped, wrote its stop checkpoint and
    cleaned up first. The message says which signal and which checkpoint holds the run (`note`);
    `exit_status` is 128 + the signal number, what a shell reports for a process that signal ended."""

    def __init__(self, signum: int, note: str) -> None:
        self.signum = signum
        self.note = note
        self.exit_status = 128 + signum
        super().__init__("; ".join(filter(None, [STOPPED_BY[signum], note,
                                                 "envs stopped and shared memory freed."])))


class RunInterruptedExit(RunInterrupted, SystemExit):
    """RunInterrupted as `train()` and `resume()` raise it, outside any event loop: also a SystemExit
    whose `code` is the exit status, so a script that does not catch it exits with that status, without
    a traceback (the sentence is logged as the run ends). Raised inside a loop, a SystemExit would stop
    the loop itself, so the async forms raise plain RunInterrupted."""

    def __init__(self, signum: int, note: str) -> None:
        super().__init__(signum, note)
        self.code = self.exit_status


class EnvTimeout(Exception):
    """An env's reset or step did not answer within --env-timeout."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"{what} did not answer within --env-timeout {timeout:g} s; make the env answer "
                         "sooner (give its I/O a timeout of its own) or raise --env-timeout")


def limit_error(exc: BaseException) -> HtsrlError | None:
    """The one sentence for a start that ran into a limit (open files, memory, processes: `ulimit -n`,
    `-v`, `-u`), naming the limit and the fix (a ConfigError where this process's own limit is what
    stopped it); None for any other failure."""
    code = getattr(exc, "errno", None)
    if code == errno.EMFILE:
        return ConfigError(f"too many open files: this process may open {_soft_limit('RLIMIT_NOFILE')} "
                           "(ulimit -n), and a run keeps a few open per env worker and per shared-memory "
                           "array; raise the limit (ulimit -n 4096) or use fewer --workers.")
    if code == errno.ENFILE:
        return HtsrlError("too many open files on this machine (its table of open files is full); close "
                          "other programs' files or raise fs.file-max.")
    if isinstance(exc, MemoryError) or code == errno.ENOMEM or (isinstance(exc, ImportError)
                                                                and "failed to map segment" in str(exc)):
        limit = _soft_limit("RLIMIT_AS")
        if limit is None:
            return HtsrlError("out of memory while starting; free memory, or ask for less (fewer --num-envs, "
                              "a shorter --rollout, smaller frames).")
        return ConfigError(f"out of memory while starting: this process may map {limit // 2**20} MiB "
                           "(ulimit -v), and a run maps about 1 GiB before it creates its envs; raise the "
                           "limit (ulimit -v unlimited).")
    processes = _soft_limit("RLIMIT_NPROC")
    if isinstance(exc, BlockingIOError) and code == errno.EAGAIN and processes is not None:  # fork() failed
        return ConfigError(f"could not start a process: this user may run {processes} processes "
                           "(ulimit -u), and a run starts one per env worker; raise the limit or use fewer "
                           "--workers.")
    return None


def _soft_limit(name: str) -> int | None:
    """This process's soft limit `name` (a resource.RLIMIT_* name), None if there is none."""
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    soft, _ = resource.getrlimit(getattr(resource, name))
    return None if soft == resource.RLIM_INFINITY else soft
