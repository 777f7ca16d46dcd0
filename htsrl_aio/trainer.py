"""Trainer: one training run as an async context manager that lives in the caller's event loop.

    async with Trainer(config) as trainer:
        async for metrics in trainer.updates():   # one dict per update, as in metrics.jsonl
            ...
    # or: summary = await trainer.run()

It wires the pieces together (env backend, shared memory, storages, inference, learner, scheduler,
run directory) and guarantees that however the run ends (finished, failed, cancelled), no worker
process and no shared-memory block outlives it. Cancelling the task that runs it stops training at
once, writes a checkpoint of the last completed update, and re-raises CancelledError;
`stop_at_next_swap()` stops it at the next swap instead, with a checkpoint that resumes exactly
(`run()` then raises RunStopped).

`Trainer.resume(path)` continues the run of a run directory (or from one checkpoint file) to its
configured total steps; see checkpoint.py for what each kind of checkpoint restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsrl_aio import checkpoint
from htsrl_aio.backends.engine import engine_groups
from htsrl_aio.backends.protocol import BackendArgs, ObsBuffers
from htsrl_aio.backends.registry import backend_name, make_backend
from htsrl_aio.backends.replica import ReplicaState, TrackerState
from htsrl_aio.config import RESUME_OVERRIDABLE, TrainConfig, available_cores
from htsrl_aio.distributions import make_distribution
from htsrl_aio.envs import probe_env, resolve_env
from htsrl_aio.errors import ConfigError, HtsrlError, TrainingDiverged
from htsrl_aio.ipc.children import start_resource_tracker
from htsrl_aio.ipc.shm import SharedArray, remove_stale_segments
from htsrl_aio.models import build_model, params_sha256
from htsrl_aio.outputs.progress import ProgressLine
from htsrl_aio.outputs.run_dir import (
    CONFIG,
    ERROR_LOG,
    SUMMARY,
    CheckpointWriteError,
    RunDirectory,
    default_logdir,
)
from htsrl_aio.outputs.tensorboard import ScalarLog
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.learner import Learner, LearnerHandle, ThreadLearner
from htsrl_aio.runtime.learner_process import ProcessLearner
from htsrl_aio.runtime.scheduler import RolloutScheduler, StartPoint
from htsrl_aio.runtime.storage import OBS_PREFIX, RolloutStorage, storage_layout
from htsrl_aio.runtime.tickets import TicketNoise
from htsrl_aio.seeding import Stream, generator

_DONE = object()
# Waiting for an in-flight update before the stop checkpoint is bounded, so Ctrl-C always returns.
SETTLE_TIMEOUT_S = 30.0


class RunStopped(Exception):
    """The run stopped at a swap, as asked (`Trainer.stop_at_next_swap`), after a checkpoint that resumes
    exactly; the message says which."""


class Trainer:
    def __init__(self, config: TrainConfig, *, resume_from: dict[str, Any] | None = None) -> None:
        """Use `Trainer.resume(path)` to continue a run; `resume_from` is a loaded checkpoint."""
        self.config = config
        self._resume = resume_from
        self.summary: dict[str, Any] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._streaming = False  # updates() is being consumed: only then are metrics queued for it
        self._last: dict[str, Any] = {}
        self._last_params: dict[str, torch.Tensor] | None = None  # as of the last completed update
        self._failure: HtsrlError | None = None
        self._resume_note: dict[str, Any] = {}
        self._stop_timer: asyncio.TimerHandle | None = None
        self._stop_timed_out = False
        self._stopped_at_swap = False  # the swap checkpoint of a requested stop is written
        # How an early stop ended: which checkpoint holds the run, and how it resumes. Until this session
        # writes one, a resumed run is where the checkpoint it resumed from left it.
        self.stop_note = "" if resume_from is None else (
            "stopped before its first update since resuming; the run stays at update "
            f"{resume_from['update']}, its checkpoints unchanged")

    async def __aenter__(self) -> Trainer:
        try:
            await self._setup()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    @classmethod
    def resume(cls, path: str | Path, **overrides: Any) -> Trainer:
        """A Trainer that continues the run in run directory `path` (from its newest resumable
        checkpoint) or from the checkpoint file `path`, to its configured total steps.

        `overrides` may change only settings that leave results unchanged (RESUME_OVERRIDABLE).
        """
        path = Path(path)
        file = path if path.is_file() else checkpoint.newest(path, resumable=True)
        state = checkpoint.load(file)
        if state.get("optimizer") is None:
            raise ConfigError(f"{file} holds parameters only (the run diverged or its learner failed), so it "
                              "cannot be resumed; resume from a checkpoint in checkpoints/ instead.")
        for key in overrides:
            if key not in RESUME_OVERRIDABLE:
                raise ConfigError(f"--{key.replace('_', '-')} cannot change when resuming (the run continues "
                                  f"as configured); only {', '.join(RESUME_OVERRIDABLE)} can.")
        run_dir = file.parent.parent if file.parent.name == checkpoint.CHECKPOINT_DIR else file.parent
        stored = TrainConfig.from_json_dict(state["config"], str(file))
        config = dataclasses.replace(stored, **overrides, logdir=str(run_dir))
        return cls(config, resume_from=state)

    def stop_at_next_swap(self) -> bool:
        """Stop at the next swap: every env finishes its rollout and the learner its update, a checkpoint
        that resumes exactly is written (checkpoints/ and checkpoint.pt), and `run()` raises RunStopped.
        If that takes longer than `stop_timeout` seconds, the run is cancelled instead (the stop
        checkpoint of the last completed update). False when training has not started: cancel instead.
        """
        if self._task is None or self._task.done():
            return False
        if self._stop_timer is None:
            self._scheduler.request_stop()
            self._stop_timer = asyncio.get_running_loop().call_later(self.cfg.stop_timeout, self._stop_now)
        return True

    def _stop_now(self) -> None:
        assert self._task is not None
        if not self._task.done():
            self._stop_timed_out = True
            self._task.cancel()

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._stop_timer is not None:
                self._stop_timer.cancel()
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            if self.summary is None and hasattr(self, "_scheduler") and not self._stopped_at_swap:
                try:
                    await self._save_stop_checkpoint()
                except CheckpointWriteError:
                    if self._failure is None:
                        raise
                    # Already failing (perhaps for the same full disk): that failure is the one to report.
        finally:
            await asyncio.shield(self._stack.aclose())

    async def _save_stop_checkpoint(self) -> None:
        """Stopped early: keep what was learned up to the last completed update."""
        diverged = isinstance(self._failure, TrainingDiverged)
        state: dict[str, Any] = {"kind": "stop", "interrupted": True, "config": self.cfg.to_json_dict(),
                                 "schedule": _schedule_dict(self._scheduler.snapshot())}
        try:
            if diverged:
                raise self._failure  # the parameters may hold NaN: keep the last good ones
            # An update still running in the learner finishes (bounded) and writes its metrics row, so
            # parameters, optimizer and metrics agree.
            await asyncio.wait_for(self._scheduler.settle(), SETTLE_TIMEOUT_S)
            await asyncio.wait_for(self.learner.settle(), SETTLE_TIMEOUT_S)
            state.update(model=self.learner.model.state_dict(), update=self.learner.version,
                         optimizer=await self.learner.optimizer_state())
        except (HtsrlError, asyncio.TimeoutError):
            if self._last_params is None:
                return
            state.update(model=self._last_params, update=self._last["update"], optimizer=None)
        self.run_dir.save_checkpoint(state)
        resumable = "its envs restart on resume" if state["optimizer"] is not None else "not resumable"
        waited = (f"the next swap did not come within --stop-timeout {self.cfg.stop_timeout:g} s, so it "
                  if self._stop_timed_out else "")
        self.stop_note = (f"{waited}stopped at once with checkpoint.pt of update {state['update']} "
                          f"({resumable})")

    async def _setup(self) -> None:
        remove_stale_segments()  # left by runs killed with their resource tracker; their pids are dead
        start_resource_tracker()
        cfg = self.cfg = self.config.resolved()
        factory = resolve_env(cfg.env, cfg)
        spec = self.spec = await probe_env(factory, cfg.env_timeout or None)
        backend = backend_name(cfg.env_backend, factory, spec)
        device = _resolve_device(cfg.device)
        if (warning := oversubscription_warning(cfg, device, available_cores())) is not None:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
        resume = self._resume
        if resume is None:
            logdir = Path(cfg.logdir or default_logdir(factory.name, cfg.algo, cfg.mode, cfg.seed))
            self.run_dir = RunDirectory.create(logdir)
        else:
            logdir = Path(cfg.logdir)
            self.run_dir = RunDirectory.reopen(logdir, resume["update"], resume["config"], RESUME_OVERRIDABLE)
        self._stack.callback(self.run_dir.close)
        resume_step = None if resume is None else resume["update"] * cfg.num_envs * cfg.rollout + 1
        self._scalars = ScalarLog(logdir, cfg.tensorboard, resume_step)
        self._stack.callback(self._scalars.close)
        config_json = {**cfg.to_json_dict(), "logdir": str(logdir), "tensorboard": self._scalars.status,
                       "env_runs": _where_envs_run(backend, cfg),
                       "determinism": _determinism_note(cfg, device)}
        self.run_dir.write_json(CONFIG, config_json)
        self._stack.enter_context(_torch_settings(cfg, device))
        model = build_model(spec, cfg)
        if resume is not None:
            model.load_state_dict(resume["model"])
        model = model.to(device)
        # Every copy starts from the same parameters (the released code's third bug).
        inference_model, behaviour = copy.deepcopy(model), copy.deepcopy(model)
        if resume is not None and resume["kind"] == "swap":
            behaviour.load_state_dict(resume["behaviour"])
        distribution = make_distribution(spec.action)
        noise = TicketNoise(cfg.seed, cfg.num_envs, cfg.rollout, distribution.noise_size, distribution.noise)
        obs_arrays = spec.obs.arrays()
        self.inference = BatchedInference(
            inference_model, distribution, noise, cfg.max_batch, obs_arrays,
            block=cfg.inference_block if cfg.deterministic else None, device=device)
        self._act_rng = generator(cfg.seed, Stream.HOST_ACT)

        layout = storage_layout(cfg.num_envs, cfg.rollout, obs_arrays, spec.action.shape, spec.action.dtype)
        storage_arrays = [self._shared_arrays(layout) for _ in range(2)]
        final_obs = self._shared_arrays({key: ((cfg.num_envs, *shape), dtype)
                                         for key, (shape, dtype) in obs_arrays.items()})
        storages = tuple(RolloutStorage(i, {name: a.array for name, a in arrays.items()})
                         for i, arrays in enumerate(storage_arrays))
        learner: LearnerHandle
        # On a GPU the learner is a thread whatever --learner says: one process owns the CUDA context.
        if cfg.learner == "process" and device.type == "cpu":
            specs = [{name: a.spec for name, a in arrays.items()} for arrays in storage_arrays]
            learner = ProcessLearner(cfg, model, behaviour, distribution, specs)
        else:
            learner = ThreadLearner(Learner(cfg, model, behaviour, distribution, device))
        if resume is not None:
            learner.restore(resume["update"], resume.get("behaviour_version", resume["update"]),
                            resume["optimizer"])
        buffers = ObsBuffers(tuple({key: arrays[OBS_PREFIX + key] for key in obs_arrays}
                                   for arrays in storage_arrays), final_obs)
        pool = make_backend(backend, BackendArgs(factory, spec, cfg.num_envs, cfg.seed, buffers, cfg.workers,
                                                 cfg.engine_batch, cfg.engine_threads,
                                                 cfg.on_env_error == "restart", self._log_restart,
                                                 env_timeout=cfg.env_timeout or None,
                                                 ray_address=cfg.ray_address, ray_actors=cfg.ray_actors,
                                                 envs_per_actor=cfg.envs_per_actor))
        self.learner = learner
        self.pool = pool
        self._stack.push_async_callback(pool.aclose)
        self._stack.push_async_callback(learner.aclose)
        await asyncio.gather(pool.start(), learner.start())
        placement = getattr(pool, "placement", None)
        if placement is not None:  # known once the backend has started (Ray: its actors and nodes)
            self.run_dir.write_json(CONFIG, {**config_json, "env_runs": placement})
        start = StartPoint() if resume is None else await self._restore(resume, storages)
        steps_per_rollout = cfg.num_envs * cfg.rollout
        self._progress = ProgressLine(cfg.num_rollouts * steps_per_rollout, cfg.progress,
                                      f"{cfg.mode}/{cfg.algo}", initial=start.rollout * steps_per_rollout)
        self._stack.callback(self._progress.close)
        final_arrays = {key: a.array for key, a in final_obs.items()}
        self._scheduler = RolloutScheduler(cfg, pool, storages, final_arrays, self.inference, learner,
                                           self._record, start=start, checkpoint=self._save_swap_checkpoint,
                                           checkpoint_every=cfg.checkpoint_every)

    async def _restore(self, state: dict[str, Any], storages: tuple[RolloutStorage, ...]) -> StartPoint:
        """Put the checkpoint's rollout and env replicas back; return where the schedule continues."""
        schedule = state["schedule"]
        update = state["update"]
        start = StartPoint(update, episodes=schedule["episodes"],
                           episode_returns=list(schedule["episode_returns"]),
                           episode_lengths=list(schedule["episode_lengths"]),
                           wall_time_s=schedule["wall_time_s"])
        envs = state.get("envs")
        if state["kind"] == "swap":
            start.rollout, start.learn_first = update + 1, True
            storage = storages[update % 2]
            storage.begin(update)
            for name, tensor in state["rollout"].items():
                storage.arrays[name][...] = tensor.numpy()
        if envs is None:
            # No env states: every env starts again, with seeds no episode of this run has used.
            trackers = [TrackerState(0, 0.0, 0, (1, update))] * self.cfg.num_envs
            blobs: list[bytes | None] = [None] * self.cfg.num_envs
        else:
            trackers = [TrackerState(*e["tracker"][:3], tuple(e["tracker"][3])) for e in envs]
            blobs = [None if e["state"] is None else checkpoint.bytes_of_tensor(e["state"]) for e in envs]
        reasons = await asyncio.gather(*(self.pool.set_state(i, ReplicaState(blob, tracker))
                                         for i, (blob, tracker) in enumerate(zip(blobs, trackers))))
        problems = [str(r) for r in reasons if r is not None]
        start.envs_restored = start.learn_first and not problems
        if envs is None:
            problems = ["the checkpoint was taken mid-rollout (the run was stopped), so it has no env states"]
        self._resume_note = {"resumed_from_update": update,
                             "resume_envs": "restored" if start.envs_restored
                             else f"restarted with new derived seeds: {problems[0]}"}
        return start

    async def _save_swap_checkpoint(self, generation: int, stopping: bool) -> None:
        """Inside swap `generation`: everything is paused, so this state resumes exactly. A stop there
        also writes it as checkpoint.pt, so either file resumes exactly."""
        learner, scheduler = self.learner, self._scheduler
        envs = await asyncio.gather(*(self.pool.get_state(i) for i in range(self.cfg.num_envs)))
        storage = scheduler.storages[generation % 2]
        state = {
            "kind": "swap", "interrupted": stopping, "config": self.cfg.to_json_dict(),
            "update": learner.version, "model": learner.model.state_dict(),
            "behaviour": learner.behaviour.state_dict(), "behaviour_version": learner.behaviour_version,
            "optimizer": await learner.optimizer_state(),
            "rollout": {name: torch.from_numpy(array.copy()) for name, array in storage.arrays.items()},
            "envs": [{"state": None if blob is None else checkpoint.tensor_of_bytes(blob),
                      "tracker": [*tracker[:3], list(tracker[3])]} for blob, tracker in envs],
            "schedule": _schedule_dict(scheduler.snapshot()),
        }
        loop = asyncio.get_running_loop()
        keep = self.cfg.keep_checkpoints
        await loop.run_in_executor(None, self.run_dir.save_periodic, state, generation, keep)
        if stopping:
            await loop.run_in_executor(None, self.run_dir.save_checkpoint, state)
            self._stopped_at_swap = True
            self.stop_note = (f"stopped at the swap after update {learner.version} with a checkpoint that "
                              f"resumes exactly ({checkpoint.periodic_name(generation)})")

    def _log_restart(self, message: str, details: str) -> None:
        """The terminal gets one line per restart; error.log gets the traceback too."""
        self.run_dir.append_text(ERROR_LOG, f"{message}\n{details}\n")
        print(f"htsrl-aio: {message}", file=sys.stderr)

    def _shared_arrays(self, layout: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, SharedArray]:
        arrays = {}
        for name, (shape, dtype) in layout.items():
            arrays[name] = SharedArray.create(shape, dtype)
            self._stack.callback(arrays[name].close)
        return arrays

    def _record(self, metrics: dict[str, Any]) -> None:
        if self._resume_note:
            metrics.update(self._resume_note)  # the first update after a resume says how it resumed
            self._resume_note = {}
        self._last = metrics
        # The learner is idle between finishing an update and the next swap: a consistent snapshot.
        self._last_params = {k: v.detach().clone() for k, v in self.learner.model.state_dict().items()}
        self.run_dir.append_metrics(metrics)
        self._scalars.write(metrics)
        self._progress.update(metrics)
        if self._streaming:  # run() alone would otherwise keep every update's metrics forever
            self._queue.put_nowait(metrics)

    async def _train(self) -> dict[str, Any]:
        start = time.perf_counter()
        steps_before = self._scheduler.start.rollout * self.cfg.num_envs * self.cfg.rollout
        try:
            await self._scheduler.run()
            if self._scheduler.stopped_at is not None:
                raise RunStopped(self.stop_note)
            optimizer_state = await self.learner.optimizer_state()
        except HtsrlError as exc:
            self._failure = exc
            # The terminal gets one sentence; the details (a worker's traceback) go to the run directory.
            self.run_dir.write_text(ERROR_LOG, f"{exc}\n\n{exc.details}")
            raise
        finally:
            self._queue.put_nowait(_DONE)
        wall = time.perf_counter() - start
        last = self._last
        summary = {
            "global_step": last.get("global_step", 0),
            "updates": self.learner.version,
            "wall_time_s": wall,
            "sps": (last.get("global_step", 0) - steps_before) / wall,
            "episode_return_mean": last.get("episode_return_mean"),
            "episodes": last.get("episodes", 0),
            "final_params_sha256": params_sha256(self.learner.model),
            "logdir": str(self.run_dir.path),
        }
        self.run_dir.save_checkpoint({"kind": "final", "interrupted": False,
                                      "model": self.learner.model.state_dict(), "optimizer": optimizer_state,
                                      "update": self.learner.version,
                                      "config": self.cfg.to_json_dict(),
                                      "schedule": _schedule_dict(self._scheduler.snapshot())})
        self.run_dir.write_json(SUMMARY, summary)
        self.summary = summary
        return summary

    def _start(self) -> asyncio.Task:
        if self._task is None:
            self._task = asyncio.ensure_future(self._train())
        return self._task

    async def updates(self) -> AsyncIterator[dict[str, Any]]:
        """Train, yielding each update's metrics (the keys of metrics.jsonl) as it completes."""
        self._streaming = True
        task = self._start()
        while (item := await self._queue.get()) is not _DONE:
            yield item
        await task  # re-raise whatever ended the run early

    async def run(self) -> dict[str, Any]:
        """Train to the end and return the summary (also written to summary.json)."""
        return await self._start()

    async def act(self, obs: Any, deterministic: bool = False) -> Any:
        """The current policy's action for one observation, as `env.step` takes it (an int for a
        Discrete space), for the host application.

        Uses the parameters collection currently acts with, and a random stream of its own, so
        calling it never changes the training run.
        """
        encoded = self.spec.obs.encode(obs, "the observation given to act()")
        params, _ = self.inference.forward({key: array[None] for key, array in encoded.items()})
        action = self.inference.distribution.choose(params, None if deterministic else self._act_rng)
        return self.spec.action.to_env(action[0].numpy())


def _schedule_dict(start: StartPoint) -> dict[str, Any]:
    return {"episodes": start.episodes, "episode_returns": start.episode_returns,
            "episode_lengths": start.episode_lengths, "wall_time_s": start.wall_time_s}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto.")
    return torch.device(name)


def _where_envs_run(backend: str, cfg: TrainConfig) -> str:
    if backend == "loop":
        return "in the event loop"
    if backend == "ray":
        return "on Ray actors (how many: once Ray has started)"
    if backend == "engine":
        groups = len(engine_groups(cfg.num_envs, cfg.engine_batch))
        return (f"in {groups} C++ vector engine(s) of up to {cfg.engine_batch} envs, "
                f"{cfg.engine_threads} thread(s) each")
    return f"in {min(cfg.workers, cfg.num_envs)} worker processes"


def oversubscription_warning(cfg: TrainConfig, device: torch.device, cores: int) -> str | None:
    """A warning when hts on a CPU runs more torch threads at once than there are cores.

    In hts mode inference and the learner compute at the same time, each with `torch_threads` OpenMP
    threads. OpenMP threads that wait between parallel regions spin (its default wait policy), so
    two teams on too few cores take each other's cores: Pong PPO at --torch-threads 2 on 2 cores ran
    114 steps/s against 568 at 1 thread, and 548 with OMP_WAIT_POLICY=PASSIVE (docs/benchmarks.md).
    One thread each starts no OpenMP threads, so nothing spins.
    """
    if cfg.mode != "hts" or device.type != "cpu" or cfg.torch_threads == 1 or 2 * cfg.torch_threads <= cores:
        return None
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return None
    return (f"--torch-threads {cfg.torch_threads} in hts mode runs {2 * cfg.torch_threads} torch threads at "
            f"once (inference and the learner) on {cores} core(s), and waiting OpenMP threads then spin "
            f"on the cores the others need (Pong: 5x slower); use --torch-threads "
            f"{max(1, cores // 2)}, or set OMP_WAIT_POLICY=PASSIVE before starting Python.")


def _determinism_note(cfg: TrainConfig, device: torch.device) -> str:
    if not cfg.deterministic:
        return "off: inference batches are not padded, results may depend on timing and batch make-up"
    if device.type == "cuda":
        return ("best effort on CUDA: padded batches and deterministic algorithms, but GPU kernels are not "
                "guaranteed bit-identical across runs")
    if torch.backends.mkl.is_available() and "STRICT" not in os.environ.get("MKL_CBWR", "").upper():
        return (f"not guaranteed: MKL_CBWR={os.environ.get('MKL_CBWR', '')} is not strict, and MKL then may "
                "round differently from run to run (unset it, or use AUTO,STRICT as htsrl_aio does)")
    return ("bit-identical across workers, max_batch and timing (CPU; same torch_threads and "
            "inference_block)")


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Apply the run's torch thread count and determinism, restoring the caller's afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic and device.type == "cuda":
        # Deterministic cuBLAS needs a fixed workspace, read when the first handle is made; without
        # it torch refuses every matrix product under use_deterministic_algorithms.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(cfg.torch_threads)
    torch.use_deterministic_algorithms(cfg.deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
