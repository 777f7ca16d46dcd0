"""The types the runtime and the env backends both speak: which transition (`StepTicket`), where its
observation goes (`ObsSlot`) and what the step returned (`StepResult`). A leaf: it imports nothing of
htsrl_aio, so neither side has to import the other to talk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

ObsSlot = Mapping[str, np.ndarray]  # one observation: key -> a view of its storage slot


class StepTicket(NamedTuple):
    """Names the storage slot a transition goes to and keys the noise that samples its action."""

    rollout: int
    env: int
    step: int


class StepResult(NamedTuple):
    """What the runtime learns of one env step (the observations themselves went to their slots)."""

    reward: float
    terminated: bool
    truncated: bool
    episode: tuple[float, int] | None  # (return, length) when an episode ended at this step
    # --on-env-error restart: (message, traceback) of the failure that re-created the env at this step.
    restarted: tuple[str, str] | None = None
    # False: the row's agent left its env's episode earlier, so this step is no transition of it (a
    # multi-agent env's row waiting for the others' episode to end); the learner masks it out.
    active: bool = True
    # After this step the row's agent is out of its env's episode (it left, or has not joined yet): if
    # the env is lost before its next step, that step is no transition of the agent either.
    waits: bool = False
