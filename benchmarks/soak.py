"""Soak: the real CLI in --on-env-error restart mode, with env workers and the main process killed.

`python -m htsrl_aio train` runs in a session of its own. Every --kill-every-s seconds a random env
worker (found in /proc by its process name) gets SIGKILL and the run restarts its envs. About every
--sigkill-every-s seconds (seeded random times) the main process gets SIGKILL, every second time its
whole process group (with multiprocessing's resource tracker, which otherwise frees the run's shared
memory; --no-group-kills: never). The soak then checks that no process of its session is left after
30 s (orphans, killed and counted) and counts its shared memory left in /dev/shm, resumes with
`--resume RUN_DIR` and counts the dead run's segments again once the resumed run is up (a resume
removes them). At the end a SIGTERM goes to the process group, as `timeout` or a terminal sends it:
exit code 143, one sentence, a checkpoint, no process and no shared memory left. Every
--sample-every-s it records the resident memory of the session's processes, their number, the run's
/dev/shm segments and env restarts. The main process restarts at each SIGKILL, so memory growth is
measured within each run between restarts (the segments), after a warm-up of each; the table gives
the longest segment.

    python benchmarks/soak.py    # 30 minutes: a worker killed every 3 minutes, the main process about every 8
    python benchmarks/soak.py --minutes 4 --kill-every-s 40 --sigkill-every-s 90 --plot /tmp/soak-smoke.png
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plotting import pyplot, save

from htsrl_aio.ipc.shm import SHM_DIR, SHM_PREFIX

ENV_WORKER = "htsrl-env-work"  # an env worker's /proc/PID/comm (htsrl_aio.ipc.children: its name, cut to 15)
ORPHAN_DEADLINE_S = 30.0  # a killed run's processes must be gone by then
START_DEADLINE_S = 180.0  # a resumed run has its env workers up by then
MIN_WARMUP_MIN = 0.5  # a run's start-up: importing torch, spawning workers
STOP_DEADLINE_S = 120.0  # a SIGTERM ends the run by then (--stop-timeout 20 s, then cleanup)


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str


@dataclasses.dataclass
class Segment:
    """One main process of the run: the first, or one resumed after a SIGKILL."""

    proc: subprocess.Popen
    start_min: float
    after_update: int  # metrics rows up to this update are an earlier process's
    stderr: Path
    pids: set[int] = dataclasses.field(default_factory=set)  # every process seen in its session
    restarts: int = 0  # env restarts it counted (each main process counts from 0)

    @property
    def pid(self) -> int:
        return self.proc.pid  # start_new_session: also its session and process group id


@dataclasses.dataclass(frozen=True)
class Sample:
    minute: float
    rss_mib: float
    shm: int
    processes: int
    restarts: int
    worker_kills: int
    main_kills: int
    settled: bool  # no worker was killed since the sample before (it may still be starting again)


@dataclasses.dataclass(frozen=True)
class MainKill:
    minute: float
    group: bool  # to the main process's group (with multiprocessing's resource tracker), not it alone
    orphans: int  # processes of its session alive ORPHAN_DEADLINE_S after the kill
    shm_left: int  # its segments in /dev/shm then, before the resume
    shm_after_resume: int  # its segments once the resumed run is up


def session(sid: int) -> list[Proc]:
    """The live processes of session `sid` (a zombie has exited)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(Proc(int(entry), int(fields[1]), stat[stat.index("(") + 1:stat.rindex(")")]))
    return found


def env_workers(sid: int) -> list[Proc]:
    return [p for p in session(sid) if p.ppid == sid and p.comm.startswith(ENV_WORKER)]


def rss_mib(pid: int) -> float:
    """Resident memory of one process (MiB), 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def shm_segments(owners: set[int]) -> int:
    """Segments in /dev/shm created by one of `owners` (named htsrl_<pid>_<hex>)."""
    names = [n[len(SHM_PREFIX):].split("_")[0] for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIX)]
    return sum(1 for pid in names if pid.isdigit() and int(pid) in owners)


def wait_for(done: Callable[[], bool], deadline_s: float) -> bool:
    """Poll `done` until it holds (True) or the deadline passes (False)."""
    deadline = time.monotonic() + deadline_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def orphans_after(seg: Segment) -> int:
    """Processes of the ended run's session still alive after ORPHAN_DEADLINE_S; killed, so the soak
    goes on."""
    wait_for(lambda: not session(seg.pid), ORPHAN_DEADLINE_S)
    left = session(seg.pid)
    for p in left:
        kill(p.pid)
    return len(left)


def last_row(metrics: Path) -> dict[str, Any]:
    """The newest whole row of metrics.jsonl ({} if none yet); the last line may be half-written."""
    with contextlib.suppress(OSError), metrics.open("rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
        for line in reversed(f.read().splitlines()):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return {}


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Soak:
    """The run, its kills and what was measured, segment by segment."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.run_dir = workdir / "run"
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.segments: list[Segment] = []
        self.samples: list[Sample] = []
        self.worker_kills: list[float] = []
        self.main_kills: list[MainKill] = []

    def minute(self) -> float:
        return (time.monotonic() - self.t0) / 60

    def start(self, argv: list[str], after_update: int) -> Segment:
        n = len(self.segments)
        stderr = self.workdir / f"stderr-{n}.txt"
        with open(self.workdir / f"stdout-{n}.txt", "w") as out, open(stderr, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "htsrl_aio", "train", *argv, "--no-progress"],
                                    stdout=out, stderr=err, start_new_session=True)
        seg = Segment(proc, self.minute(), after_update, stderr, {proc.pid})
        self.segments.append(seg)
        return seg

    def check_running(self, seg: Segment) -> None:
        if seg.proc.poll() is not None:
            raise SystemExit(f"the run exited with code {seg.proc.returncode}: {last_line(seg.stderr)}")

    def sample(self, seg: Segment) -> None:
        procs = session(seg.pid)
        seg.pids |= {p.pid for p in procs}
        self.count_restarts(seg)
        kills = len(self.worker_kills)
        s = Sample(self.minute(), sum(rss_mib(p.pid) for p in procs), shm_segments(seg.pids), len(procs),
                   sum(sg.restarts for sg in self.segments), kills, len(self.main_kills),
                   not self.samples or self.samples[-1].worker_kills == kills)
        self.samples.append(s)
        print(f"{s.minute:6.1f} min  rss {s.rss_mib:7.1f} MiB  shm {s.shm:3d}  processes {s.processes:2d}  "
              f"env restarts {s.restarts:4d}  worker kills {kills:3d}  main kills {s.main_kills}", flush=True)

    def count_restarts(self, seg: Segment) -> bool:
        """Take the env restarts of `seg`'s newest metrics row; False before it has written one."""
        # A resume keeps the rows up to its checkpoint, written by the killed process with its own count.
        row = last_row(self.run_dir / "metrics.jsonl")
        if row.get("update", 0) > seg.after_update:
            seg.restarts = max(seg.restarts, row["env_restarts"])
        return row.get("update", 0) > seg.after_update

    def kill_worker(self, seg: Segment) -> bool:
        workers = env_workers(seg.pid)
        if workers:
            kill(self.rng.choice(workers).pid)
            self.worker_kills.append(self.minute())
        return bool(workers)

    def kill_main(self, seg: Segment) -> Segment:
        """SIGKILL the main process (or its process group), count what is left of its run once its
        session should be empty, resume."""
        minute, group = self.minute(), self.args.group_kills and len(self.main_kills) % 2 == 1
        self.count_restarts(seg)
        if group:
            os.killpg(seg.pid, signal.SIGKILL)
        else:
            kill(seg.pid)
        seg.proc.wait()
        orphans = orphans_after(seg)
        shm_left = shm_segments(seg.pids)
        killed_at = last_row(self.run_dir / "metrics.jsonl").get("update", 0)
        resumed = self.start(["--resume", str(self.run_dir)], killed_at)
        if not wait_for(lambda: bool(env_workers(resumed.pid)) or resumed.proc.poll() is not None,
                        START_DEADLINE_S):
            raise SystemExit(f"the resumed run has no env worker after {START_DEADLINE_S:.0f} s")
        self.check_running(resumed)
        k = MainKill(minute, group, orphans, shm_left, shm_segments(seg.pids))
        self.main_kills.append(k)
        print(f"{minute:6.1f} min  SIGKILL to the main process{' group' if group else ''}: {orphans} "
              f"orphans, {shm_left} shm segments left, {k.shm_after_resume} once resumed", flush=True)
        return resumed

    def run(self) -> dict[str, Any]:
        a = self.args
        seg = self.start(["--env", a.env, "--num-envs", str(a.num_envs), "--workers", str(a.workers),
                          "--seed", str(a.seed), "--total-steps", str(10**12), "--on-env-error", "restart",
                          "--no-tensorboard", "--logdir", str(self.run_dir)], 0)
        next_worker_kill = a.kill_every_s if a.kill_every_s > 0 else float("inf")
        next_main_kill = self.next_main_kill(0.0)
        next_sample = a.sample_every_s
        while (now := time.monotonic() - self.t0) < a.minutes * 60:
            time.sleep(max(0.0, min(next_sample, a.minutes * 60) - now))
            now = time.monotonic() - self.t0
            self.check_running(seg)
            while next_sample <= now:
                next_sample += a.sample_every_s
            self.sample(seg)
            if now >= next_worker_kill and self.kill_worker(seg):
                next_worker_kill = now + a.kill_every_s  # and no SIGKILL before its restarts are counted
            # A SIGKILL before the first checkpoint would leave nothing to resume: wait for one.
            elif now >= next_main_kill and any((self.run_dir / "checkpoints").glob("*.pt")):
                seg = self.kill_main(seg)
                next_main_kill = self.next_main_kill(time.monotonic() - self.t0)
        return self.stop(seg)

    def next_main_kill(self, now: float) -> float:
        every = self.args.sigkill_every_s
        return now + self.rng.uniform(0.5, 1.5) * every if every > 0 else float("inf")

    def stop(self, seg: Segment) -> dict[str, Any]:
        """SIGTERM to the process group, as `timeout` or a closed terminal sends it, once the run trains
        (one just resumed stops at once, with no checkpoint newer than the one it resumed from)."""
        wait_for(lambda: self.count_restarts(seg), START_DEADLINE_S)
        os.killpg(seg.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            seg.proc.wait(timeout=STOP_DEADLINE_S)
        return {"exit": seg.proc.returncode, "sentence": last_line(seg.stderr), "orphans": orphans_after(seg),
                "shm": shm_segments(set().union(*(sg.pids for sg in self.segments))),
                "checkpoint": (self.run_dir / "checkpoint.pt").exists()}

    def close(self) -> None:
        """Whatever the soak leaves running when it fails or is interrupted."""
        for seg in self.segments:
            for p in session(seg.pid):
                kill(p.pid)


def growth(samples: list[Sample], start: float, warmup_frac: float) -> dict[str, float] | None:
    """RSS of one segment after its warm-up: medians of the first and last tenth, peak, growth in %.
    A sample taken right after a worker was killed is left out: a worker starting again is a dip, not
    a change in what the run holds."""
    if len(samples) < 2:
        return None
    cut = start + max(warmup_frac * (samples[-1].minute - start), MIN_WARMUP_MIN)
    warm = [s.rss_mib for s in samples if s.minute >= cut and s.settled]
    if not warm:
        return None
    window = max(1, len(warm) // 10)
    base, end = statistics.median(warm[:window]), statistics.median(warm[-window:])
    return {"from": start, "to": samples[-1].minute, "base": base, "end": end, "peak": max(warm),
            "growth": 100 * (end - base) / base}


def report(soak: Soak, final: dict[str, Any]) -> None:
    a, kills = soak.args, soak.main_kills
    starts = [sg.start_min for sg in soak.segments]
    per_segment = [growth([s for s in soak.samples if lo <= s.minute < hi], lo, a.warmup_frac)
                   for lo, hi in zip(starts, [*starts[1:], float("inf")])]
    measured = [g for g in per_segment if g is not None]
    longest = max(measured, key=lambda g: g["to"] - g["from"])
    for i, g in enumerate(per_segment):
        if g is not None:
            print(f"segment {i} ({g['from']:.1f}-{g['to']:.1f} min): RSS after warm-up {g['base']:.0f} MiB, "
                  f"at end {g['end']:.0f} MiB, peak {g['peak']:.0f} MiB, growth {g['growth']:+.1f}%")
    shm_left = ", ".join(str(sum(k.shm_left for k in kills if k.group == g)) for g in (False, True))
    baselines = ", ".join(f"{g['base']:.0f}" for g in measured)
    print("\n| minutes | workers killed | main SIGKILLs (resumed) | env restarts | longest segment "
          "| RSS after warm-up | RSS at end | peak | growth | RSS after warm-up per segment "
          "| orphans after SIGKILLs | shm after SIGKILLs (main, group) | shm after resumes "
          "| SIGTERM: exit | orphans | shm |\n" + "|---" * 16 + "|")
    print(f"| {soak.samples[-1].minute:.1f} | {len(soak.worker_kills)} | {len(kills)} "
          f"| {soak.samples[-1].restarts} | {longest['to'] - longest['from']:.1f} min "
          f"| {longest['base']:.0f} MiB | {longest['end']:.0f} MiB "
          f"| {max(g['peak'] for g in measured):.0f} MiB | {longest['growth']:+.1f}% "
          f"| {baselines} MiB | {sum(k.orphans for k in kills)} "
          f"| {shm_left} | {sum(k.shm_after_resume for k in kills)} | {final['exit']} | {final['orphans']} "
          f"| {final['shm']} |")
    ok = (final["exit"] == 128 + signal.SIGTERM and final["checkpoint"] and not final["orphans"]
          and not final["shm"] and not any(k.orphans or k.shm_after_resume for k in kills))
    print(f"target < 5% growth after warm-up (longest segment): "
          f"{'met' if longest['growth'] < 5 else 'NOT met'}; after the SIGTERM: exit {final['exit']}, "
          f"checkpoint.pt {'written' if final['checkpoint'] else 'MISSING'}, {final['orphans']} orphans, "
          f"{final['shm']} shm segments left; {'all clean' if ok else 'NOT clean'}")
    print(f"its last words: {final['sentence']}")


def plot(soak: Soak, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 5), height_ratios=(2, 1))
    starts = [sg.start_min for sg in soak.segments]
    for i, (lo, hi) in enumerate(zip(starts, [*starts[1:], float("inf")])):
        part = [s for s in soak.samples if lo <= s.minute < hi]
        top.plot([s.minute for s in part], [s.rss_mib for s in part], color="C0",
                 label="RSS, all processes of the run (MiB)" if i == 0 else None)
    bottom.step([s.minute for s in soak.samples], [s.shm for s in soak.samples], where="post", color="C2",
                label="/dev/shm segments")
    bottom.step([s.minute for s in soak.samples], [s.processes for s in soak.samples], where="post",
                color="C1", label="processes")
    kills = soak.main_kills
    bottom.scatter([k.minute for k in kills], [k.shm_left for k in kills], marker="x", color="C2", zorder=3,
                   label="/dev/shm segments left by the killed run")
    bottom.scatter([k.minute for k in kills], [k.orphans for k in kills], marker="o", color="C1", zorder=3,
                   label="orphans 30 s after the SIGKILL")
    for ax in (top, bottom):
        for minute in soak.worker_kills:
            ax.axvline(minute, color="grey", lw=0.5, ls=":", label="env worker SIGKILL")
        for k in soak.main_kills:
            ax.axvline(k.minute, color="C3", lw=1, ls="-." if k.group else "--",
                       label=f"SIGKILL to the main process{' group' if k.group else ''}, --resume")
    top.set_ylabel("MiB")
    top.set_title(f"soak: {soak.args.env}, {soak.args.num_envs} envs, {soak.args.workers} workers, "
                  "restart mode")
    bottom.set_xlabel("minutes")
    bottom.set_ylabel("count")
    legend = {label: handle for ax in (top, bottom)  # one entry per label, for both panels
              for handle, label in zip(*ax.get_legend_handles_labels())}
    top.legend(legend.values(), legend.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    parser.add_argument("--kill-every-s", type=float, default=180.0, help="SIGKILL an env worker (0: never)")
    parser.add_argument("--sigkill-every-s", type=float, default=480.0,
                        help="mean time between SIGKILLs of the main process, each after 0.5-1.5x (0: never)")
    parser.add_argument("--group-kills", action=argparse.BooleanOptionalAction, default=True,
                        help="every second of those SIGKILLs goes to the main process group, also "
                             "killing multiprocessing's resource tracker (as `timeout -s KILL` does): the "
                             "run's shared memory is left for the resume to remove")
    parser.add_argument("--sample-every-s", type=float, default=10.0)
    parser.add_argument("--warmup-frac", type=float, default=0.2,
                        help="share of each segment that is warm-up (at least 30 s)")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="the run's seed and the kill times'")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/soak.png"), help="PNG to write")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="htsrl-soak-"))
    soak = Soak(args, workdir)
    try:
        final = soak.run()
    finally:
        soak.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report(soak, final)
    plot(soak, args.plot)


if __name__ == "__main__":
    main()
