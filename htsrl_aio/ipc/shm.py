"""Numpy arrays in named shared memory, so observations cross processes without pickling.

Who owns a segment must be decided from something every process sharing /dev/shm can see: containers
of one pod (or `docker --ipc=host`) share it but not their pid namespaces, so a pid says nothing there.
A process that creates segments holds an exclusive flock on a lock file of its own in /dev/shm while it
has any; the kernel drops that lock when the process dies, in whatever namespace. A segment is stale
only if its creator's lock file can be locked by the cleaner.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

SHM_PREFIX = "htsrl_"
SHM_DIR = Path("/dev/shm")  # where POSIX shared memory shows up as files (Linux)
# htsrl_<pid>_<token><12 hex>: the token names the creator's lock file, htsrl_<pid>_<token>.lock.
_TOKEN_HEX = 8
_SEGMENT = re.compile(rf"{SHM_PREFIX}(\d+_[0-9a-f]{{{_TOKEN_HEX}}})[0-9a-f]{{12}}$")
_LOCK = re.compile(rf"{SHM_PREFIX}(\d+_[0-9a-f]{{{_TOKEN_HEX}}})\.lock$")


class _CreatorLock:
    """This process's flock on its lock file in /dev/shm, held while it has segments of its own.

    Taken before its first segment exists and dropped (the file removed) after its last is unlinked, so
    a segment never exists without a held lock while its creator lives, and nothing stays behind.
    """

    def __init__(self) -> None:
        self._start_empty()

    def _start_empty(self) -> None:
        self._mutex = threading.Lock()  # segments may be created and closed from several threads
        self._fd: int | None = None
        self._path: Path | None = None
        self._segments = 0
        self.owner = ""  # "<pid>_<token>", the part of a segment's name that names its lock file

    def acquire(self) -> str:
        """Count one more segment; return the owner part of its name."""
        with self._mutex:
            if self._segments == 0:
                self.owner = f"{os.getpid()}_{secrets.token_hex(_TOKEN_HEX // 2)}"
                self._path = SHM_DIR / f"{SHM_PREFIX}{self.owner}.lock"
                self._fd = _locked_file(self._path)
            self._segments += 1
            return self.owner

    def release(self) -> None:
        """Count one segment fewer; after the last, remove the lock file and drop the lock."""
        with self._mutex:
            self._segments -= 1
            if self._segments == 0 and self._path is not None and self._fd is not None:
                self._path.unlink(missing_ok=True)
                os.close(self._fd)
                self._fd = self._path = None

    def forget(self) -> None:
        """In a forked child: the parent's lock and segments are the parent's."""
        if self._fd is not None:
            os.close(self._fd)  # the parent's descriptor keeps the lock
        self._start_empty()  # a new mutex too: another thread may have held the old one at the fork


def _locked_file(path: Path) -> int | None:
    """Create `path` already locked (a cleaner must never find it unlocked while we live): the lock is
    taken on a hidden name, which cleaners ignore, then renamed into place. None without /dev/shm."""
    hidden = path.with_name(f".{path.name}")
    try:
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileNotFoundError:
        return None  # no /dev/shm (not Linux): segments are not files, so no cleaner can see them
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(hidden, path)
    return fd


_CREATOR = _CreatorLock()
os.register_at_fork(after_in_child=_CREATOR.forget)


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
        nbytes = _nbytes(shape, dtype)
        name = f"{SHM_PREFIX}{_CREATOR.acquire()}{secrets.token_hex(6)}"  # its creator's lock file
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=nbytes)
        except BaseException:
            _CREATOR.release()
            raise
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
            _unlink(self._shm)
            self.owner = False  # a second close must not release the creator's lock again
            _CREATOR.release()


def _unlink(shm: shared_memory.SharedMemory) -> None:
    """Remove a segment's name, telling multiprocessing's resource tracker only while it lives.

    `unlink()` would start a tracker that was killed (kill -9, the OOM killer) again, with a warning, and
    the new one prints a KeyError traceback for every segment it never saw registered. Without a tracker
    the segment's name is removed all the same: the lock file, not the tracker, owns the cleanup.
    """
    with contextlib.suppress(FileNotFoundError):
        if _tracker_alive():
            shm.unlink()
        else:
            (SHM_DIR / shm.name).unlink()


def _tracker_alive() -> bool:
    """Whether this process's resource tracker runs (it was started by the first segment created)."""
    tracker = resource_tracker._resource_tracker
    return tracker._fd is not None and tracker._check_alive()


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The size of the segment `SharedArray.create` makes for an array."""
    return max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)


def segments_bytes(arrays: Iterable[tuple[tuple[int, ...], np.dtype]]) -> int:
    """What segments for these (shape, dtype) arrays take in /dev/shm, a tmpfs of whole pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(-(-_nbytes(shape, dtype) // page) * page for shape, dtype in arrays)


def free_bytes(shm_dir: Path = SHM_DIR) -> int | None:
    """The bytes new segments may take in /dev/shm, None without it (not Linux). A tmpfs that fills
    while a segment is written is no error Python sees: the writer dies of SIGBUS."""
    try:
        stats = os.statvfs(shm_dir)
    except FileNotFoundError:
        return None
    return stats.f_bavail * stats.f_frsize


def remove_stale_segments(shm_dir: Path = SHM_DIR) -> list[tuple[str, int]]:
    """Unlink the segments whose creator is dead, and its lock file; return (name, bytes) of each removed.

    A SIGKILL that also reaches multiprocessing's resource tracker leaves a run's segments behind for
    good. A creator is dead when its lock file can be locked here: the kernel released its lock, in
    whatever pid namespace it ran. Whatever cannot be told dead is left: a held lock, a lock file of
    another user, segments with no lock file (of an older htsrl-aio, whose names carry only a pid).
    """
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:  # no /dev/shm (not Linux): nothing to look at
        return []
    segments: dict[str, list[str]] = {}
    for name in names:
        if (segment := _SEGMENT.match(name)) is not None:
            segments.setdefault(segment.group(1), []).append(name)
    removed = []
    for name in names:
        if (lock := _LOCK.match(name)) is not None:
            removed += _remove_if_dead(shm_dir, name, segments.get(lock.group(1), []))
    return removed


def _remove_if_dead(shm_dir: Path, lock_name: str, segments: list[str]) -> list[tuple[str, int]]:
    """Remove `segments` and their lock file if the lock can be taken: its holder is dead."""
    try:
        fd = os.open(shm_dir / lock_name, os.O_RDONLY)
    except OSError:  # gone meanwhile, or another user's
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # held: its creator lives, here or in another namespace
        if os.fstat(fd).st_ino != _inode(shm_dir / lock_name):
            return []  # removed (and the name reused) by another cleaner meanwhile
        removed = []
        for name in [*segments, lock_name]:  # the lock file last: while it exists, what it owns can be found
            with contextlib.suppress(OSError):
                size = os.stat(shm_dir / name).st_size
                os.unlink(shm_dir / name)
                removed.append((name, size))
        return removed
    finally:
        os.close(fd)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
