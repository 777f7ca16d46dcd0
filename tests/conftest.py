from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from htsrl_aio.ipc.shm import SHM_PREFIX


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


@contextlib.contextmanager
def envs_for_tests_importable() -> Iterator[None]:
    """Let the processes of a Ray instance started meanwhile import the tests' own envs (envs_for_tests)
    by module name, as spawned worker processes do through sys.path."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), before]))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="class")
def ray_instance():
    """One small local Ray instance for the tests of a class (a run joins it and leaves it running);
    skipped when Ray is not installed."""
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
    with envs_for_tests_importable():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
