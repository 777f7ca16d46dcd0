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
    return [(row["update"], row["actions_sha256"]) for row in rows]


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
    params = []
    for run in (run_a, run_b):
        path = run / SUMMARY
        params.append(json.loads(path.read_text())["final_params_sha256"] if path.exists() else None)
    if params[0] != params[1]:
        return Divergence(False, None, f"actions agree for all {len(a)} updates but final parameters differ.")
    return Divergence(True, None, f"identical: {len(a)} updates of actions and the final parameters agree.")
