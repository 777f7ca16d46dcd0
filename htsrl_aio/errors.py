"""Errors that end a run with one sentence for the user (the CLI prints them without a traceback)."""


class HtsrlError(RuntimeError):
    """Base for failures the user can act on; the message names the problem and the fix."""

    details: str = ""  # a traceback or other detail for the run's log file, not for the terminal


class ConfigError(HtsrlError, ValueError):
    """A configuration value or an input is wrong; the message says which and how to fix it."""


class EnvError(HtsrlError):
    """An env raised, returned something malformed, or its worker process died."""


class TrainingDiverged(HtsrlError):
    """A loss or a parameter became NaN or Inf; the update that did it is named."""


class EnvTimeout(Exception):
    """An env's reset or step did not answer within --env-timeout."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"{what} did not answer within --env-timeout {timeout:g} s; make the env answer "
                         "sooner (give its I/O a timeout of its own) or raise --env-timeout")
