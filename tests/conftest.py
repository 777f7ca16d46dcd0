from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from htsrl_aio.envs.shm import SHM_PREFIX


def leaked_segments() -> set[str]:
    """Segments created by this process (names carry the creator's pid)."""
    mine = f"{SHM_PREFIX}{os.getpid()}_"
    return {name for name in os.listdir("/dev/shm") if name.startswith(mine)}


@pytest.fixture
def no_leaks():
    """Fail the test if it leaves a worker process or a shared-memory segment behind."""
    before = leaked_segments()
    yield
    assert multiprocessing.active_children() == []
    assert leaked_segments() - before == set()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
