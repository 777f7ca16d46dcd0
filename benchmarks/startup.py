"""Where the start of `htsrl-aio train --env CartPole-v1 --total-steps 2048 --no-progress` goes: wall
seconds since the process started, and CPU seconds of this process and of its children (live ones read
from /proc, reaped ones from getrusage), at the end of each phase up to the first update. CPU seconds
are what to compare on a loaded machine (docs/benchmarks.md, "Start-up").

    python benchmarks/startup.py RUN_DIR    # Linux only (/proc)
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
ROWS: list[tuple[str, float, float, float]] = []


def _stat(pid: int) -> tuple[int, float, float]:
    """ppid, CPU seconds (user + sys) and start (seconds after boot) of process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[19]) / TICK


def _started_at() -> float:
    with open("/proc/uptime") as f:
        since_boot = float(f.read().split()[0])
    return time.time() - (since_boot - _stat(os.getpid())[2])


STARTED_AT = _started_at()


def children_cpu() -> float:
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):  # ended meanwhile
                stats[int(name)] = _stat(int(name))
    live, parents = 0.0, {os.getpid()}
    while parents:
        parents = {pid for pid, (ppid, _, _) in stats.items() if ppid in parents}
        live += sum(stats[pid][1] for pid in parents)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return live + reaped.ru_utime + reaped.ru_stime


def mark(what: str) -> None:
    ROWS.append((what, time.time() - STARTED_AT, time.process_time(), children_cpu()))


def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a coroutine function or a plain one), marking where it ends."""
    if hasattr(function, "__code__") and function.__code__.co_flags & 0x80:  # CO_COROUTINE
        @functools.wraps(function)
        async def waited(*args: Any, **kwargs: Any) -> Any:
            result = await function(*args, **kwargs)
            mark(label)
            return result
        return waited

    @functools.wraps(function)
    def called(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        mark(label)
        return result
    return called


def main() -> None:
    mark("interpreter and site")
    from htsrl_aio import cli
    mark("import htsrl_aio.cli")
    import htsrl_aio.training  # noqa: F401  # torch
    mark("import htsrl_aio.training (torch)")
    from htsrl_aio import assembly
    from htsrl_aio.runtime.learner_process import ProcessLearner

    assembly.probe_env = timed("env check (probe_env, a child process)", assembly.probe_env)
    assembly._open_outputs = timed("run directory, TensorBoard writer", assembly._open_outputs)
    assembly.build_model = timed("torch settings, model", assembly.build_model)
    make_backend = assembly.make_backend

    def make_timed_backend(*args: Any, **kwargs: Any) -> Any:
        backend = make_backend(*args, **kwargs)
        backend.start = timed("env workers ready (backend.start)", backend.start)
        return backend

    assembly.make_backend = make_timed_backend
    ProcessLearner.start = timed("learner process ready (learner.start)", ProcessLearner.start)
    update = ProcessLearner.update

    async def first_update(self: ProcessLearner, *args: Any, **kwargs: Any) -> Any:
        result = await update(self, *args, **kwargs)
        if ProcessLearner.update is first_update:
            ProcessLearner.update = update
            mark("first update")
        return result

    ProcessLearner.update = first_update
    status = cli.main(["train", "--env", "CartPole-v1", "--total-steps", "2048", "--no-progress",
                       "--logdir", sys.argv[1]])
    mark("run ends")
    print("| phase ends | wall s | main CPU s | children CPU s |\n| --- | ---: | ---: | ---: |")
    for what, wall, own, children in ROWS:
        print(f"| {what} | {wall:.2f} | {own:.2f} | {children:.2f} |")
    sys.exit(status)


if __name__ == "__main__":
    main()
