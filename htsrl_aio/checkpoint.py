"""Checkpoints: what they hold, where they live in a run directory, and loading them safely.

Kinds (the "kind" key):
- "swap": taken inside swap g every --checkpoint-every updates (checkpoints/update-<g>.pt, the last
  --keep-checkpoints kept). It holds the learner (current and behaviour parameters, optimizer, update
  count), rollout g waiting to be learned, every env replica's state where it can be saved, and the
  episode statistics, so a run resumed from it ends bit-identical to one never stopped. A stop signal
  ends the run at the next swap with one, written to checkpoint.pt as well.
- "stop": written when a run fails, is cancelled, or its stop did not reach a swap in time
  (checkpoint.pt): the parameters and optimizer of the last completed update. Resuming from it
  restarts the envs with fresh derived seeds.
- "final": the end of a finished run (checkpoint.pt).
Every random stream of a run is derived from (seed, purpose, ids), so the update count and the episode
counts stored per env are the whole random state.

Everything is tensors and plain values, loaded with `torch.load(weights_only=True)`: a checkpoint from
elsewhere cannot run code. Env states are pickled bytes and only unpickled if signed on this machine
(see backends/env_state.py).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from htsrl_aio.errors import ConfigError

log = logging.getLogger(__name__)

# v2: observations stored per key, action rows of any space, bootstrap values instead of final
# observations, model state of models/actor_critic.py. v1 files are refused in one sentence.
FORMAT = "htsrl-aio checkpoint v2"
_OLDER_FORMATS = ("htsrl-aio checkpoint v1",)
CHECKPOINT_DIR = "checkpoints"
FINAL = "checkpoint.pt"
_PERIODIC = re.compile(r"update-(\d+)\.pt$")
# What resume and eval read from each kind of checkpoint (the optimizer may be None: not resumable).
_FIELDS = ("kind", "update", "model", "optimizer", "config", "schedule")
_KIND_FIELDS = {"final": (), "stop": (),
                "swap": ("behaviour", "rollout", "envs")}


def periodic_name(update: int) -> str:
    return f"{CHECKPOINT_DIR}/update-{update:07d}.pt"


def periodic_checkpoints(run_dir: Path) -> list[Path]:
    """The run's swap checkpoints, oldest first."""
    found = [p for p in (run_dir / CHECKPOINT_DIR).glob("update-*.pt") if _PERIODIC.search(p.name)]
    return sorted(found, key=lambda p: int(_PERIODIC.search(p.name).group(1)))


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint made by htsrl-aio; anything else is refused in one sentence, never executed."""
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path} is not a readable checkpoint (corrupt, truncated, or not a torch file).")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long; the line naming the refused object is what matters.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ConfigError(f"{path} holds objects other than tensors and plain values{what}, so it was not "
                          "loaded and nothing in it was executed.") from None
    except Exception as exc:  # truncated zip, random bytes, a file from another program
        raise ConfigError(f"{path} is not a readable checkpoint (corrupt or not a torch file: "
                          f"{type(exc).__name__}: {exc}).") from None
    if isinstance(data, dict) and data.get("format") in _OLDER_FORMATS:
        raise ConfigError(f"{path} was written by an older htsrl-aio ({data['format']}), whose networks and "
                          "rollouts this version does not read; evaluate or resume it with htsrl-aio 0.1.")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is a torch file but not an htsrl-aio checkpoint.")
    missing = [key for key in (*_FIELDS, *_KIND_FIELDS.get(data.get("kind"), ())) if key not in data]
    if missing or data["kind"] not in _KIND_FIELDS:
        what = f"lacks {', '.join(missing)}" if missing else f"is of unknown kind {data['kind']!r}"
        raise ConfigError(f"{path} is an htsrl-aio checkpoint but {what} (damaged, or written by another "
                          "version), so it cannot be used.")
    return data


def newest(run_dir: Path, resumable: bool) -> Path:
    """The checkpoint to continue (resumable) or evaluate from: the readable one with the most updates.

    On a tie a swap checkpoint wins, as it resumes exactly. An unreadable one (a disk error, a kill
    during a copy) is passed over, saying so, for the next newest.
    """
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist.")
    candidates: list[tuple[int, int, Path]] = []
    for path in periodic_checkpoints(run_dir):
        candidates.append((int(_PERIODIC.search(path.name).group(1)), 1, path))
    unreadable: list[str] = []
    final = run_dir / FINAL
    if final.exists():
        try:
            data = load(final)
        except ConfigError as exc:
            unreadable.append(str(exc))
        else:
            if not resumable or data["optimizer"] is not None:
                candidates.append((int(data["update"]), 0, final))
    for _update, periodic, path in sorted(candidates, reverse=True):
        if periodic:
            try:
                load(path)
            except ConfigError as exc:
                unreadable.append(str(exc))
                continue
        for reason in unreadable:
            log.warning("%s Using %s instead, the newest readable checkpoint.", reason, path)
        return path
    what = "resumable checkpoint" if resumable else "checkpoint"
    readable, why = ("readable ", f" ({unreadable[0]})") if unreadable else ("", "")
    raise ConfigError(f"{run_dir} holds no {readable}{what} (checkpoint.pt or checkpoints/update-*.pt){why}.")


def tensor_of_bytes(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def bytes_of_tensor(tensor: torch.Tensor) -> bytes:
    return tensor.numpy().tobytes()
