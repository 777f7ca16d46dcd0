"""Errors that end a run with one sentence for the user (the CLI prints them without a traceback)."""


class HtsrlError(RuntimeError):
    """Base for failures the user can act on; the message names the problem and the fix."""

    details: str = ""  # a traceback or other detail for the run's log file, not for the terminal


class EnvError(HtsrlError):
    """An env raised, returned something malformed, or its worker process died."""


class TrainingDiverged(HtsrlError):
    """A loss or a parameter became NaN or Inf; the update that did it is named."""
