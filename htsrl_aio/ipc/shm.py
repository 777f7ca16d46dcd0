"""Numpy arrays in named shared memory, so observations cross processes without pickling."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

SHM_PREFIX = "htsrl_"
SHM_DIR = Path("/dev/shm")  # where POSIX shared memory shows up as files (Linux)
_OWNED = re.compile(rf"{SHM_PREFIX}(\d+)_[0-9a-f]+$")


@dataclass(frozen=True)
class SharedArraySpec:
    """Everything a worker needs to attach to a shared array: picklable and tiny."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class SharedArray:
    """Owns (parent) or borrows (worker) one shared-memory block viewed as a numpy array."""

    def __init__(self, shm: shared_memory.SharedMemory, spec: SharedArraySpec, owner: bool) -> None:
        self._shm = shm
        self.spec = spec
        self.owner = owner
        # frombuffer holds a buffer export on the block, so the block cannot be unmapped under a live view
        # (np.ndarray(buffer=...) holds none: a view used after close() was a segmentation fault).
        dtype = np.dtype(spec.dtype)
        count = int(np.prod(spec.shape))
        self.array: np.ndarray = np.frombuffer(shm.buf, dtype=dtype, count=count).reshape(spec.shape)

    @classmethod
    def create(cls, shape: tuple[int, ...], dtype: np.dtype) -> SharedArray:
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        name = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"  # pid: whose segment it is
        shm = shared_memory.SharedMemory(name=name, create=True, size=nbytes)
        array = cls(shm, SharedArraySpec(name, tuple(shape), np.dtype(dtype).str), owner=True)
        array.array.fill(0)
        return array

    @classmethod
    def attach(cls, spec: SharedArraySpec) -> SharedArray:
        # Workers are spawned, so they share the parent's resource tracker: attaching registers the
        # name a second time (a no-op) and the owner's unlink unregisters it once. Nothing leaks.
        return cls(shared_memory.SharedMemory(name=spec.name), spec, owner=False)

    def close(self) -> None:
        """Drop the mapping; the owner also unlinks the block so nothing is left in /dev/shm.

        Views of the array that are still alive elsewhere keep the mapping (never a dangling pointer):
        it goes with the last of them, and the block's name is gone from /dev/shm at once either way.
        """
        self.array = np.empty(0)
        try:
            self._shm.close()
        except BufferError:  # views are alive: let them own the mapping, release the rest now
            self._shm._buf = None
            self._shm._mmap = None
            with contextlib.suppress(OSError):
                os.close(self._shm._fd)
            self._shm._fd = -1
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


def remove_stale_segments(shm_dir: Path = SHM_DIR) -> list[tuple[str, int]]:
    """Unlink the segments whose creating process is dead; return (name, bytes) of each removed.

    A SIGKILL that also reaches multiprocessing's resource tracker leaves a run's segments behind for
    good. The creator's pid is in every name, so what no live process owns can go. Segments of another
    user, or of a pid reused since, are left alone.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):  # no /dev/shm (not Linux): nothing to look at
        for entry in os.scandir(shm_dir):
            owner = _OWNED.match(entry.name)
            if owner is None or _alive(int(owner.group(1))):
                continue
            with contextlib.suppress(OSError):
                size = entry.stat().st_size
                os.unlink(entry.path)
                removed.append((entry.name, size))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
