"""Compare two run directories update by update, by their per-update action hashes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from htsrl_aio.errors import ConfigError
from htsrl_aio.outputs.run_dir import METRICS, SUMMARY, read_metrics


@dataclass(frozen=True)
class Divergence:
    identical: bool
    first_update: int | None
    message: str


def _action_hashes(run: Path) -> list[tuple[int, str]]:
    if not (run / METRICS).is_file():
        raise ConfigError(f"{run} is not a run directory: it has no {METRICS}.")
    rows = read_metrics(run)
    if not rows:
        raise ConfigError(f"{run} holds no update to compare: its {METRICS} is empty (a run stopped before "
                          "its first update, or not an htsrl-aio run).")
    if any(not isinstance(row.get("actions_sha256"), str) for row in rows):
        raise ConfigError(f"{run / METRICS} has rows without actions_sha256: it is not from an htsrl-aio run "
                          "that can be compared.")
    return [(row["update"], row["actions_sha256"]) for row in rows]


def _final_params(run: Path) -> str | None:
    """The final parameters' hash in the run's summary.json; None for a run that has not finished."""
    path = run / SUMMARY
    if not path.exists():
        return None
    try:
        params = json.loads(path.read_text())["final_params_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable, not JSON, not a summary
        raise ConfigError(f"{path} is not a readable htsrl-aio summary ({type(exc).__name__}: {exc}).") \
            from None
    return str(params)


def first_divergence(run_a: Path, run_b: Path) -> Divergence:
    """The first update whose actions differ, or whether the final parameters differ."""
    a, b = _action_hashes(run_a), _action_hashes(run_b)
    for (update, hash_a), (_, hash_b) in zip(a, b):
        if hash_a != hash_b:
            return Divergence(False, update, f"runs diverge at update {update}: its actions differ.")
    if len(a) != len(b):
        return Divergence(False, min(len(a), len(b)) + 1,
                          f"actions agree for {min(len(a), len(b))} updates, then one run stops "
                          f"({len(a)} vs {len(b)} updates).")
    if _final_params(run_a) != _final_params(run_b):
        return Divergence(False, None, f"actions agree for all {len(a)} updates but final parameters differ.")
    return Divergence(True, None, f"identical: {len(a)} updates of actions and the final parameters agree.")
