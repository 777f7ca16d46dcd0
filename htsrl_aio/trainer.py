"""Trainer: one training run as an async context manager that lives in the caller's event loop.

    async with Trainer(config) as trainer:
        async for metrics in trainer.updates():   # one dict per update, as in metrics.jsonl
            ...
    # or: summary = await trainer.run()

It wires the pieces together (env backend, shared memory, storages, inference, learner, scheduler,
run directory) and guarantees that however the run ends (finished, failed, cancelled), no worker
process and no shared-memory block outlives it. Cancelling the task that runs it stops training,
writes a checkpoint of the last completed update, and re-raises CancelledError.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsrl_aio.config import ConfigError, TrainConfig
from htsrl_aio.envs import probe_env, resolve_env
from htsrl_aio.envs.loop_pool import LoopEnvPool
from htsrl_aio.envs.pool import EnvPool
from htsrl_aio.envs.replica import EnvBackend
from htsrl_aio.envs.shm import SharedArray
from htsrl_aio.errors import HtsrlError
from htsrl_aio.models import build_model, params_sha256
from htsrl_aio.outputs.progress import ProgressLine
from htsrl_aio.outputs.run_dir import CONFIG, ERROR_LOG, SUMMARY, RunDirectory, default_logdir
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.learner import Learner, LearnerHandle, ThreadLearner
from htsrl_aio.runtime.learner_process import ProcessLearner
from htsrl_aio.runtime.scheduler import RolloutScheduler
from htsrl_aio.runtime.storage import RolloutStorage, storage_layout
from htsrl_aio.runtime.tickets import TicketSampler
from htsrl_aio.seeding import Stream, generator

_DONE = object()


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.summary: dict[str, Any] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._last: dict[str, Any] = {}
        self._last_params: dict[str, torch.Tensor] | None = None  # as of the last completed update

    async def __aenter__(self) -> Trainer:
        try:
            await self._setup()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            if self.summary is None and self._last_params is not None:
                # Stopped early: keep what was learned up to the last completed update.
                self.run_dir.save_checkpoint({"model": self._last_params, "update": self._last["update"],
                                              "interrupted": True, "config": self.cfg.to_json_dict()})
        finally:
            await asyncio.shield(self._stack.aclose())

    async def _setup(self) -> None:
        cfg = self.cfg = self.config.resolved()
        factory = resolve_env(cfg.env)
        spec = self.spec = await probe_env(factory)
        device = _resolve_device(cfg.device)
        logdir = Path(cfg.logdir or default_logdir(factory.name, cfg.algo, cfg.mode, cfg.seed))
        self.run_dir = RunDirectory.create(logdir)
        self._stack.callback(self.run_dir.close)
        self.run_dir.write_json(CONFIG, {**cfg.to_json_dict(), "logdir": str(logdir),
                                         "env_runs": "in the event loop (AsyncEnv)" if spec.in_loop
                                         else f"in {min(cfg.workers, cfg.num_envs)} worker processes",
                                         "determinism": _determinism_note(cfg, device)})
        self._stack.enter_context(_torch_settings(cfg))
        model = build_model(spec, cfg).to(device)
        # Every copy starts from the same parameters (the released code's third bug).
        inference_model, behaviour = copy.deepcopy(model), copy.deepcopy(model)
        self.inference = BatchedInference(
            inference_model, TicketSampler(cfg.seed, cfg.num_envs, cfg.rollout), cfg.max_batch,
            spec.obs_shape, spec.obs_dtype, block=cfg.inference_block if cfg.deterministic else None,
            device=device)
        self._act_rng = generator(cfg.seed, Stream.HOST_ACT)

        layout = storage_layout(cfg.num_envs, cfg.rollout, spec.obs_shape, spec.obs_dtype)
        storage_arrays = [self._shared_arrays(layout) for _ in range(2)]
        final_obs = self._shared_arrays({"final_obs": ((cfg.num_envs, *spec.obs_shape), spec.obs_dtype)})
        storages = tuple(RolloutStorage(i, {name: a.array for name, a in arrays.items()})
                         for i, arrays in enumerate(storage_arrays))
        learner: LearnerHandle
        if cfg.learner == "process":
            specs = [{name: a.spec for name, a in arrays.items()} for arrays in storage_arrays]
            learner = ProcessLearner(cfg, model, behaviour, specs)
        else:
            learner = ThreadLearner(Learner(cfg, model, behaviour, device))
        pool: EnvBackend
        if spec.in_loop:
            pool = LoopEnvPool(factory, cfg.num_envs, cfg.seed, [s.obs for s in storages],
                               final_obs["final_obs"].array)
        else:
            pool = EnvPool(factory, cfg.num_envs, cfg.workers, cfg.seed,
                           [arrays["obs"] for arrays in storage_arrays], final_obs["final_obs"])
        self.learner = learner
        self._stack.push_async_callback(pool.aclose)
        self._stack.push_async_callback(learner.aclose)
        await asyncio.gather(pool.start(), learner.start())
        self._progress = ProgressLine(cfg.num_rollouts * cfg.num_envs * cfg.rollout, cfg.progress,
                                      f"{cfg.mode}/{cfg.algo}")
        self._stack.callback(self._progress.close)
        self._scheduler = RolloutScheduler(cfg, pool, storages, final_obs["final_obs"].array,
                                           self.inference, learner, self._record)

    def _shared_arrays(self, layout: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, SharedArray]:
        arrays = {}
        for name, (shape, dtype) in layout.items():
            arrays[name] = SharedArray.create(shape, dtype)
            self._stack.callback(arrays[name].close)
        return arrays

    def _record(self, metrics: dict[str, Any]) -> None:
        self._last = metrics
        # The learner is idle between finishing an update and the next swap: a consistent snapshot.
        self._last_params = {k: v.detach().clone() for k, v in self.learner.model.state_dict().items()}
        self.run_dir.append_metrics(metrics)
        self._progress.update(metrics)
        self._queue.put_nowait(metrics)

    async def _train(self) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            await self._scheduler.run()
            optimizer_state = await self.learner.optimizer_state()
        except HtsrlError as exc:
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
            "sps": last.get("global_step", 0) / wall,
            "episode_return_mean": last.get("episode_return_mean"),
            "episodes": last.get("episodes", 0),
            "final_params_sha256": params_sha256(self.learner.model),
            "logdir": str(self.run_dir.path),
        }
        self.run_dir.save_checkpoint({"model": self.learner.model.state_dict(), "optimizer": optimizer_state,
                                      "update": self.learner.version, "config": self.cfg.to_json_dict()})
        self.run_dir.write_json(SUMMARY, summary)
        self.summary = summary
        return summary

    def _start(self) -> asyncio.Task:
        if self._task is None:
            self._task = asyncio.ensure_future(self._train())
        return self._task

    async def updates(self) -> AsyncIterator[dict[str, Any]]:
        """Train, yielding each update's metrics (the keys of metrics.jsonl) as it completes."""
        task = self._start()
        while (item := await self._queue.get()) is not _DONE:
            yield item
        await task  # re-raise whatever ended the run early

    async def run(self) -> dict[str, Any]:
        """Train to the end and return the summary (also written to summary.json)."""
        return await self._start()

    async def act(self, obs: np.ndarray, deterministic: bool = False) -> int:
        """The current policy's action for one observation, for the host application.

        Uses the parameters collection currently acts with, and a random stream of its own, so
        calling it never changes the training run.
        """
        logits, _ = self.inference.forward(np.asarray(obs, dtype=self.spec.obs_dtype)[None])
        if deterministic:
            return int(logits[0].argmax())
        probs = np.exp(logits[0] - logits[0].max())
        return int(self._act_rng.choice(len(probs), p=probs / probs.sum()))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto.")
    return torch.device(name)


def _determinism_note(cfg: TrainConfig, device: torch.device) -> str:
    if not cfg.deterministic:
        return "off: inference batches are not padded, results may depend on timing and batch make-up"
    if device.type == "cuda":
        return ("best effort on CUDA: padded batches and deterministic algorithms, but GPU kernels are not "
                "guaranteed bit-identical across runs")
    return ("bit-identical across workers, max_batch and timing (CPU; same torch_threads and "
            "inference_block)")


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig) -> Iterator[None]:
    """Apply the run's torch thread count and determinism, restoring the caller's afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.torch_threads)
    torch.use_deterministic_algorithms(cfg.deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
