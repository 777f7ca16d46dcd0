"""Checkpoints: what they hold, where they live in a run directory, and loading them safely.

A `Checkpoint` is assembled from self-saving components (Acme's `Saveable` shape): each component's
`save()` gives plain values and tensors under its own keys, and its `restore` takes them back.
- the learner (runtime/learner.py; update, model, behaviour, behaviour_version, optimizer): update
  count, current parameters (with the normalisation statistics), the parameters the pending rollout
  was collected with, optimizer;
- the schedule (runtime/scheduler.py; schedule, rollout): episode statistics, wall time, restarts, the
  version that collected the pending rollout, and inside a swap that rollout itself;
- the env replicas (backends/replica_states.py; envs): each env's state where it can be saved, and its
  episode tracker.
Adding state to a run is adding a component to `RunParts.save` and `assemble` (assembly.py), not a
key here.

Kinds:
- "swap": taken inside swap g every --checkpoint-every updates (checkpoints/update-<g>.pt, the last
  --keep-checkpoints kept), with every component, so a run resumed from it ends bit-identical to one
  never stopped. A stop signal ends the run at the next swap with one, written to checkpoint.pt too.
- "stop": written when a run fails, is cancelled, or its stop did not reach a swap in time
  (checkpoint.pt): the learner of the last completed update and the episode statistics. Resuming
  from it restarts the envs with fresh derived seeds.
- "final": the end of a finished run (checkpoint.pt).
Every random stream of a run is derived from (seed, purpose, ids), so the update count and the episode
counts stored per env are the whole random state. Each checkpoint also records the settings the user
gave (`user_config`, so a resume on another machine resolves its machine-dependent defaults again) and
the versions of the libraries and the CPU/GPU models it was written with (`library_versions`).

Everything is tensors and plain values, loaded with `torch.load(weights_only=True)`: a checkpoint from
elsewhere cannot run code. Env states are pickled bytes and only unpickled if signed on this machine
(see backends/env_state.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import pickle
import platform
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from htsrl_aio.errors import ConfigError

# v3: the user's own settings and the library versions next to the resolved settings; trackers as
# named fields; the schedule names the version that collected the pending rollout. v2 files (the same
# parts otherwise) are read; v1 files are refused in one sentence.
FORMAT = "htsrl-aio checkpoint v3"
_READABLE_OLDER = ("htsrl-aio checkpoint v2",)
_REFUSED_OLDER = ("htsrl-aio checkpoint v1",)
CHECKPOINT_DIR = "checkpoints"
FINAL = "checkpoint.pt"
_PERIODIC = re.compile(r"update-(\d+)\.pt$")
Kind = Literal["swap", "stop", "final"]
# The parts resume and eval read from each kind of checkpoint (the optimizer may be None: not resumable).
_PARTS = ("update", "model", "optimizer", "schedule")
_KIND_PARTS: dict[str, tuple[str, ...]] = {"final": (), "stop": (), "swap": ("behaviour", "rollout", "envs")}
# Libraries whose versions a checkpoint records (where installed).
_LIBRARIES = ("htsrl-aio", "torch", "numpy", "gymnasium", "ale-py", "envpool")
log = logging.getLogger(__name__)



@dataclasses.dataclass
class Checkpoint:
    """One checkpoint: its kind, the run's settings, and each component's part under its own keys."""

    kind: Kind
    interrupted: bool  # written because the run was stopped early
    config: dict[str, Any]  # the resolved settings the run used
    parts: dict[str, Any]  # each component's part, under its own keys
    user_config: dict[str, Any] | None = None  # the settings the user gave (None: written before v3)
    versions: dict[str, str] = dataclasses.field(default_factory=lambda: library_versions())
    path: Path | None = None  # the file it was loaded from, for messages; not written

    @property
    def update(self) -> int:
        return int(self.parts["update"])

    @property
    def model(self) -> dict[str, torch.Tensor]:
        return self.parts["model"]

    @property
    def resumable(self) -> bool:
        """False for the parameters-only checkpoint of a run that diverged or whose learner failed."""
        return self.parts.get("optimizer") is not None

    def __getitem__(self, key: str) -> Any:
        """A field by its key in the file (`kind`, `config`, `model`, `update`, ...)."""
        return self.to_dict()[key]

    def to_dict(self) -> dict[str, Any]:
        """What the file holds: plain values and tensors only."""
        return {"format": FORMAT, "kind": self.kind, "interrupted": self.interrupted, "config": self.config,
                "user_config": self.user_config, "versions": self.versions, **self.parts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path) -> Checkpoint:
        """The checkpoint a file's dict holds; one sentence for anything else."""
        meta = {"format", "kind", "interrupted", "config", "user_config", "versions"}
        missing = [key for key in ("kind", "config", *_PARTS, *_KIND_PARTS.get(data.get("kind"), ()))
                   if key not in data]
        malformed = [] if missing else _malformed(data)
        if missing or malformed or data["kind"] not in _KIND_PARTS:
            what = (f"lacks {', '.join(missing)}" if missing else f"holds a malformed {', '.join(malformed)}"
                    if malformed else f"is of unknown kind {data['kind']!r}")
            raise ConfigError(f"{path} is an htsrl-aio checkpoint but {what} (damaged, or written by another "
                              "version), so it cannot be used.")
        return cls(kind=data["kind"], interrupted=bool(data.get("interrupted", False)),
                   config=dict(data["config"]), parts={k: v for k, v in data.items() if k not in meta},
                   user_config=data.get("user_config"), versions=dict(data.get("versions") or {}), path=path)


def _malformed(data: Mapping[str, Any]) -> list[str]:
    """The parts every reader uses at once that are not of their type (an edited or damaged file)."""
    model = data["model"]
    wrong = {"config": not isinstance(data["config"], dict),
             "update": not isinstance(data["update"], int) or isinstance(data["update"], bool),
             "model": not (isinstance(model, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                           for k, v in model.items()))}
    return [key for key, bad in wrong.items() if bad]


def library_versions() -> dict[str, str]:
    """Python's and each installed library's version, the machine's architecture, CPU model and (where
    torch sees CUDA) GPU models: what config.json, checkpoints and trackers record beside a result."""
    versions = {"python": platform.python_version(), "machine": platform.machine(), **_hardware()}
    for name in _LIBRARIES:
        if name == "envpool" and "envpool" not in sys.modules:
            continue  # only where the run used it
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def _hardware() -> dict[str, str]:
    """The CPU model and the GPU models, once per process: naming a GPU initialises CUDA."""
    hardware = {"cpu": _cpu_model()}
    if torch.cuda.is_available():
        hardware["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return hardware


def _cpu_model() -> str:
    """/proc/cpuinfo's "model name" (Linux); else what the platform says, which is often only the
    architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def periodic_name(update: int) -> str:
    return f"{CHECKPOINT_DIR}/update-{update:07d}.pt"


def periodic_checkpoints(run_dir: Path) -> list[Path]:
    """The run's swap checkpoints, oldest first."""
    found = [p for p in (run_dir / CHECKPOINT_DIR).glob("update-*.pt") if _PERIODIC.search(p.name)]
    return sorted(found, key=lambda p: int(_PERIODIC.search(p.name).group(1)))


def load(path: Path) -> Checkpoint:
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
    if isinstance(data, dict) and data.get("format") in _REFUSED_OLDER:
        raise ConfigError(f"{path} was written by an older htsrl-aio ({data['format']}), whose networks and "
                          "rollouts this version does not read; evaluate or resume it with htsrl-aio 0.1.")
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, *_READABLE_OLDER):
        raise ConfigError(f"{path} is a torch file but not an htsrl-aio checkpoint.")
    return Checkpoint.from_dict(data, path)


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
            if not resumable or data.resumable:
                candidates.append((data.update, 0, final))
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

