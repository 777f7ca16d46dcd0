"""The env replicas' part of a checkpoint: each env's saved state (where it can be saved) and its
episode tracker, asked of whichever backend hosts them, by env id."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import torch

from htsrl_aio.backends.protocol import EnvBackend
from htsrl_aio.backends.replica import Lineage, ReplicaState, TrackerState


class ReplicaStates:
    """Saves and restores every replica of `backend` (call both while no env is stepping)."""

    def __init__(self, backend: EnvBackend, num_envs: int) -> None:
        self.backend = backend
        self.num_envs = num_envs

    async def save(self) -> dict[str, Any]:
        states = await asyncio.gather(*(self.backend.get_state(i) for i in range(self.num_envs)))
        return {"envs": [{"state": None if blob is None else _tensor_of_bytes(blob),
                          "tracker": tracker._asdict() | {"lineage": [int(i) for i in tracker.lineage]}}
                         for blob, tracker in states]}

    async def restore(self, parts: Mapping[str, Any], update: int) -> str | None:
        """Put the replicas back as `parts` has them; None, or why their envs start again instead.

        Without saved env states (a checkpoint taken mid-rollout), or where one does not load, envs
        start new episodes with a seed lineage no episode of this run has used.
        """
        envs = parts.get("envs")
        if envs is None:
            fresh = ReplicaState(None, TrackerState(0, 0.0, 0, (Lineage.RESUMED, update)))
            await asyncio.gather(*(self.backend.set_state(i, fresh) for i in range(self.num_envs)))
            return "the checkpoint was taken mid-rollout (the run was stopped), so it has no env states"
        reasons = await asyncio.gather(*(self.backend.set_state(i, _replica_state(env))
                                         for i, env in enumerate(envs)))
        return next((str(reason) for reason in reasons if reason is not None), None)


def _replica_state(saved: Mapping[str, Any]) -> ReplicaState:
    tracker = saved["tracker"]
    if isinstance(tracker, Mapping):
        tracker = TrackerState(**{**tracker, "lineage": tuple(tracker["lineage"])})
    else:  # checkpoint format v2: a positional list
        tracker = TrackerState(*tracker[:3], tuple(tracker[3]))
    return ReplicaState(None if saved["state"] is None else saved["state"].numpy().tobytes(), tracker)


def _tensor_of_bytes(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)
