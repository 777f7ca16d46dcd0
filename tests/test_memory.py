"""RunMemory owns the run's shared memory: after close, every request is refused in one sentence, views
handed out earlier can no longer crash the process, and nothing is left in /dev/shm."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import leaked_segments
from harness import dead_pid

from htsrl_aio.cli import main as cli_main
from htsrl_aio.errors import ConfigError
from htsrl_aio.ipc import shm
from htsrl_aio.ipc.shm import SHM_DIR
from htsrl_aio.runtime.memory import MemoryClosed, RunMemory

ROOT = Path(__file__).parent.parent


def small_memory() -> RunMemory:
    return RunMemory(num_envs=3, rollout_len=4, obs_arrays={"obs": ((2,), np.dtype(np.float32))},
                     action_shape=(), action_dtype=np.dtype(np.int64))


def test_storage_larger_than_the_free_shared_memory_is_refused_before_allocating(monkeypatch):
    """Before, a /dev/shm smaller than the storage (Docker's 64 MiB) killed the run with SIGBUS while
    the segments were filled."""
    statvfs = os.statvfs

    def docker_default(path):  # 64 MiB, of which 60 are free
        return SimpleNamespace(f_bavail=60 * 256, f_frsize=4096) if Path(path) == SHM_DIR else statvfs(path)

    monkeypatch.setattr(shm.os, "statvfs", docker_default)
    before = leaked_segments()
    atari = {"obs": ((4, 84, 84), np.dtype(np.uint8))}  # 16 envs x 129 steps x 27.6 KiB, twice
    with pytest.raises(ConfigError) as refused:
        RunMemory(16, 128, atari, action_shape=(), action_dtype=np.dtype(np.int64))
    assert str(refused.value) == (
        "the rollout storage needs 111.7 MiB of shared memory but /dev/shm has 60.0 MiB free; give it more "
        "room (Docker's default is 64 MiB: start the container with --shm-size, e.g. --shm-size=2g) or store "
        "less: fewer --num-envs, a shorter --rollout or smaller frames (--frame-size).")
    assert leaked_segments() == before  # nothing was allocated
    small_memory().close()  # what fits is made as before


def test_every_consumer_sees_the_same_memory():
    memory = small_memory()
    try:
        storage = memory.storages[1]
        memory.obs_buffers.slot(1, 2, 0)["obs"][:] = (5.0, 6.0)  # where a backend writes
        assert storage.obs_at(2, 0)["obs"].tolist() == [5.0, 6.0]  # where the scheduler reads
        assert [spec["obs:obs"].shape for spec in memory.specs] == [(5, 3, 2)] * 2  # the learner attaches
        assert memory.final_obs["obs"].shape == (3, 2)
    finally:
        memory.close()


def test_after_close_requests_are_refused_and_storages_are_empty():
    memory = small_memory()
    storage = memory.storages[0]
    names = [spec.name for specs in memory.specs for spec in specs.values()]
    memory.close()
    memory.close()  # idempotent
    for request in ("storages", "obs_buffers", "specs", "final_obs"):
        with pytest.raises(MemoryClosed, match="shared memory was released"):
            getattr(memory, request)
    with pytest.raises(IndexError):
        storage.record_action(0, 0, np.int64(1), 0.0, 0.0)
    assert not any((Path("/dev/shm") / name).exists() for name in names)


def test_a_view_used_after_close_does_not_crash_the_process():
    """Before RunMemory, closing a SharedArray unmapped memory that numpy views still pointed at: the
    next access was a segmentation fault (exit -11) instead of anything Python could report."""
    script = textwrap.dedent("""
        import numpy as np
        from htsrl_aio.runtime.memory import RunMemory
        memory = RunMemory(3, 4, {"obs": ((2,), np.dtype(np.float32))}, (), np.dtype(np.int64))
        view = memory.storages[0].obs_at(1, 2)["obs"]  # as a collector holds it across an await
        memory.close()
        view[:] = 7.0
        print(float(view.sum()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "14.0"


# A creator of shared memory in another pid namespace (a container of the same pod): its pid there is
# no process here, so only its lock file can tell whether it lives. "close" ends it normally; "die"
# ends it as a SIGKILL of it and its resource tracker would, leaving its segment behind.
OTHER_NAMESPACE = textwrap.dedent("""
    import os, sys
    from multiprocessing import resource_tracker
    import numpy as np
    os.getpid = lambda: int(sys.argv[1])  # the pid it has in its own namespace
    from htsrl_aio.ipc.shm import SharedArray
    array = SharedArray.create((1024,), np.dtype(np.float32))
    print(array.spec.name, flush=True)
    if sys.stdin.readline() == "die\\n":
        resource_tracker.unregister(array._shm._name, "shared_memory")
        os._exit(9)
    array.close()
""")


def creator_in_another_namespace() -> tuple[subprocess.Popen, str, str]:
    """The creator, its segment's name and the prefix every file of it in /dev/shm has."""
    creator = subprocess.Popen([sys.executable, "-c", OTHER_NAMESPACE, str(dead_pid())],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    name = creator.stdout.readline().strip()  # once it is printed the segment exists
    return creator, name, name[:-12]


def files_of(prefix: str) -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}


def test_clean_leaves_the_shared_memory_of_a_live_process_of_another_pid_namespace(capsys):
    creator, name, prefix = creator_in_another_namespace()
    try:
        assert cli_main(["clean"]) == 0
        assert name not in capsys.readouterr().out
        assert files_of(prefix) == {name, f"{prefix}.lock"}
    finally:
        creator.communicate("close\n", timeout=120)
    assert creator.returncode == 0 and files_of(prefix) == set()  # its lock file went with its last segment


def test_clean_removes_the_shared_memory_and_lock_file_of_a_dead_process_of_another_namespace(capsys):
    creator, name, prefix = creator_in_another_namespace()
    creator.communicate("die\n", timeout=120)
    try:
        assert files_of(prefix) == {name, f"{prefix}.lock"}
        assert cli_main(["clean"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("removed ") and name in out and f"{prefix}.lock" in out
        assert files_of(prefix) == set()
    finally:
        for left in files_of(prefix):
            Path("/dev/shm", left).unlink()
