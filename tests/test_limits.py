"""Limits of the process met at start (`ulimit -n`, `ulimit -v`): one sentence naming the limit and the
fix and exit status 2, never tracebacks; a soft open-files limit below what a run needs is raised."""

import errno
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = [sys.executable, "-m", "htsrl_aio", "train", "--num-envs", "4", "--workers", "2", "--rollout", "16",
         "--total-steps", "128", "--no-progress"]
_, HARD_OPEN_FILES = resource.getrlimit(resource.RLIMIT_NOFILE)


def train_limited(run: Path, limit: int, soft: int, hard: int) -> subprocess.CompletedProcess:
    def apply() -> None:
        resource.setrlimit(limit, (soft, hard))

    return subprocess.run([*TRAIN, "--logdir", str(run)], capture_output=True, text=True, preexec_fn=apply)


@pytest.mark.parametrize("limit,value,sentence", [
    (resource.RLIMIT_NOFILE, 64, r"this process may open only 64 files \(ulimit -n\), and a run with 2 "
                                 r"env worker\(s\) needs about 272; raise the limit \(ulimit -n 4096\) "
                                 r"or use fewer --workers\."),
    # Before: numpy's OpenBLAS ended the process with a line of its own (500 MiB), or a MemoryError
    # traceback (700 MiB).
    (resource.RLIMIT_AS, 500 * 2**20, r"this process may map only 500 MiB \(ulimit -v\), and a run maps "
                                      r"about 1024 MiB before it creates its envs; raise the limit "
                                      r"\(ulimit -v unlimited\)\."),
], ids=["open-files", "memory"])
def test_a_limit_too_small_for_a_run_is_one_sentence(tmp_path, limit, value, sentence):
    done = train_limited(tmp_path / "run", limit, value, value)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(f"htsrl-aio: error: {sentence}", done.stderr.strip()), done.stderr


def test_a_soft_open_files_limit_below_the_need_is_raised(tmp_path):
    done = train_limited(tmp_path / "run", resource.RLIMIT_NOFILE, 64, HARD_OPEN_FILES)
    assert done.returncode == 0, done.stderr


def test_limits_met_later_name_the_limit():
    from htsrl_aio.errors import ConfigError, limit_error

    files = limit_error(OSError(errno.EMFILE, "Too many open files"))
    assert isinstance(files, ConfigError) and "(ulimit -n)" in str(files)
    memory = limit_error(MemoryError())
    assert memory is not None and "out of memory while starting" in str(memory)
    assert limit_error(OSError(errno.ENOENT, "No such file or directory")) is None
