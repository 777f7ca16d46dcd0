"""RunMemory: the one owner of a run's shared memory.

Both rollout storages and the final-observation slots live in shared memory, so env workers write
observations where the learner reads them without a copy. Each consumer gets the view it needs from
here: the scheduler its `storages` and `final_obs`, the env backend its `obs_buffers`, the learner
process the `specs` to attach to. After `close()` every request is refused in one sentence, and the
storages handed out hold no arrays any more: a late access raises instead of touching freed memory.
"""

from __future__ import annotations

import numpy as np

from htsrl_aio.backends.protocol import ObsBuffers
from htsrl_aio.errors import ConfigError
from htsrl_aio.ipc.shm import SHM_DIR, SharedArray, SharedArraySpec, free_bytes, segments_bytes
from htsrl_aio.runtime.storage import OBS_PREFIX, Layout, RolloutStorage, storage_layout

StorageSpecs = list[dict[str, SharedArraySpec]]


class MemoryClosed(RuntimeError):
    """The run's shared memory was released (the run ended); nothing may read or write it now."""


def _require_room(arrays: list[tuple[tuple[int, ...], np.dtype]]) -> None:
    """Refuse, before allocating, storage that /dev/shm cannot hold: filling it would kill the run
    with SIGBUS, without a word."""
    needed, free = segments_bytes(arrays), free_bytes()
    if free is not None and needed > free:
        raise ConfigError(
            f"the rollout storage needs {needed / 2**20:.1f} MiB of shared memory but {SHM_DIR} has "
            f"{free / 2**20:.1f} MiB free; give it more room (Docker's default is 64 MiB: start the "
            "container with --shm-size, e.g. --shm-size=2g) or store less: fewer --num-envs, a shorter "
            "--rollout or smaller frames (--frame-size).")


class RunMemory:
    def __init__(self, num_envs: int, rollout_len: int, obs_arrays: Layout, action_shape: tuple[int, ...],
                 action_dtype: np.dtype, state_size: int = 0, agents: bool = False) -> None:
        self._blocks: list[SharedArray] = []
        self._closed = False
        layout = storage_layout(num_envs, rollout_len, obs_arrays, action_shape, action_dtype, state_size,
                                agents)
        final = {key: ((num_envs, *shape), dtype) for key, (shape, dtype) in obs_arrays.items()}
        _require_room([*layout.values(), *layout.values(), *final.values()])
        try:
            self._storage_arrays = [self._create(layout) for _ in range(2)]
            self._final = self._create(final)
        except BaseException:
            self.close()
            raise
        self._storages = tuple(RolloutStorage(i, {name: a.array for name, a in arrays.items()})
                               for i, arrays in enumerate(self._storage_arrays))

    def _create(self, layout: Layout) -> dict[str, SharedArray]:
        arrays = {}
        for name, (shape, dtype) in layout.items():
            arrays[name] = SharedArray.create(shape, dtype)
            self._blocks.append(arrays[name])
        return arrays

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryClosed("the run's shared memory was released when the run ended; it cannot be used "
                               "any more")

    @property
    def storages(self) -> tuple[RolloutStorage, RolloutStorage]:
        """The two rollout storages (collection fills one while the learner reads the other)."""
        self._check_open()
        return self._storages

    @property
    def final_obs(self) -> dict[str, np.ndarray]:
        """Key -> (N, ...): the final observation of each env's last time-limit truncation."""
        self._check_open()
        return {key: a.array for key, a in self._final.items()}

    @property
    def obs_buffers(self) -> ObsBuffers:
        """Where env backends write observations."""
        self._check_open()
        keys = [name[len(OBS_PREFIX):] for name in self._storage_arrays[0] if name.startswith(OBS_PREFIX)]
        return ObsBuffers(tuple({key: arrays[OBS_PREFIX + key] for key in keys}
                                for arrays in self._storage_arrays), self._final)

    @property
    def specs(self) -> StorageSpecs:
        """What another process needs to attach to both storages (names, shapes, dtypes)."""
        self._check_open()
        return [{name: a.spec for name, a in arrays.items()} for arrays in self._storage_arrays]

    def close(self) -> None:
        """Release every block (idempotent); storages handed out become empty."""
        if self._closed:
            return
        self._closed = True
        for storage in getattr(self, "_storages", ()):
            storage.release()
        for block in self._blocks:
            block.close()
        self._blocks.clear()
