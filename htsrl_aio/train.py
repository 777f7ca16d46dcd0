"""Training entry points: `train(config)` from plain code, `await train_async(config)` from a loop.

This module wires the pieces together (env workers, shared memory, storages, inference, learner,
scheduler, run directory) and guarantees that whatever happens, no worker process and no
shared-memory block outlives the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from htsrl_aio.config import ConfigError, TrainConfig
from htsrl_aio.envs import EnvSpec, probe_env, resolve_env
from htsrl_aio.envs.loop_pool import LoopEnvPool
from htsrl_aio.envs.pool import EnvPool
from htsrl_aio.envs.replica import EnvBackend
from htsrl_aio.envs.shm import SharedArray
from htsrl_aio.errors import HtsrlError
from htsrl_aio.models import MLPActorCritic, params_sha256
from htsrl_aio.outputs.progress import ProgressLine
from htsrl_aio.outputs.run_dir import CONFIG, ERROR_LOG, SUMMARY, RunDirectory, default_logdir
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.learner import Learner, LearnerHandle, ThreadLearner
from htsrl_aio.runtime.learner_process import ProcessLearner
from htsrl_aio.runtime.scheduler import RolloutScheduler
from htsrl_aio.runtime.storage import RolloutStorage, storage_layout
from htsrl_aio.runtime.tickets import TicketSampler
from htsrl_aio.seeding import Stream, derive_seed

T = TypeVar("T")


def train(config: TrainConfig) -> dict[str, Any]:
    """Train to the end on a fresh event loop (uvloop when installed); return the summary."""
    return run_event_loop(train_async(config))


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop: uvloop when importable, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def train_async(config: TrainConfig) -> dict[str, Any]:
    """Train to the end inside the running event loop; return the summary (also in summary.json)."""
    cfg = config.resolved()
    factory = resolve_env(cfg.env)
    spec = await probe_env(factory)
    device = _resolve_device(cfg.device)
    logdir = Path(cfg.logdir) if cfg.logdir else default_logdir(factory.name, cfg.algo, cfg.mode, cfg.seed)
    run_dir = RunDirectory.create(logdir)
    run_dir.write_json(CONFIG, {**cfg.to_json_dict(), "logdir": str(logdir),
                                "env_runs": "in the event loop (AsyncEnv)" if spec.in_loop
                                else f"in {min(cfg.workers, cfg.num_envs)} worker processes",
                                "determinism": _determinism_note(cfg, device)})

    with _torch_settings(cfg):
        model = _build_model(spec, cfg).to(device)
        # Every copy starts from the same parameters (the released code's third bug).
        inference_model, behaviour = copy.deepcopy(model), copy.deepcopy(model)
        inference = BatchedInference(inference_model, TicketSampler(cfg.seed, cfg.num_envs, cfg.rollout),
                                     cfg.max_batch, spec.obs_shape, spec.obs_dtype,
                                     block=cfg.inference_block if cfg.deterministic else None,
                                     device=device)
        layout = storage_layout(cfg.num_envs, cfg.rollout, spec.obs_shape, spec.obs_dtype)
        shared: list[SharedArray] = []
        pool: EnvBackend | None = None
        learner: LearnerHandle | None = None
        progress = ProgressLine(cfg.num_rollouts * cfg.num_envs * cfg.rollout, cfg.progress,
                                f"{cfg.mode}/{cfg.algo}")
        start = time.perf_counter()
        last: dict[str, Any] = {}

        def record(metrics: dict[str, Any]) -> None:
            last.update(metrics)
            run_dir.append_metrics(metrics)
            progress.update(metrics)

        try:
            storage_arrays = []
            for _ in range(2):
                arrays = {name: SharedArray.create(shape, dtype) for name, (shape, dtype) in layout.items()}
                shared.extend(arrays.values())
                storage_arrays.append(arrays)
            final_obs = SharedArray.create((cfg.num_envs, *spec.obs_shape), spec.obs_dtype)
            shared.append(final_obs)
            storages = tuple(RolloutStorage(i, {name: a.array for name, a in arrays.items()})
                             for i, arrays in enumerate(storage_arrays))
            if cfg.learner == "process":
                specs = [{name: a.spec for name, a in arrays.items()} for arrays in storage_arrays]
                learner = ProcessLearner(cfg, model, behaviour, specs)
            else:
                learner = ThreadLearner(Learner(cfg, model, behaviour, device))
            if spec.in_loop:
                pool = LoopEnvPool(factory, cfg.num_envs, cfg.seed, [s.obs for s in storages],
                                   final_obs.array)
            else:
                pool = EnvPool(factory, cfg.num_envs, cfg.workers, cfg.seed,
                               [arrays["obs"] for arrays in storage_arrays], final_obs)
            await asyncio.gather(pool.start(), learner.start())
            scheduler = RolloutScheduler(cfg, pool, storages, final_obs.array, inference, learner, record)
            await scheduler.run()
            optimizer_state = await learner.optimizer_state()
        except HtsrlError as exc:
            # The terminal gets one sentence; the details (a worker's traceback) go to the run directory.
            run_dir.write_text(ERROR_LOG, f"{exc}\n\n{exc.details}")
            raise
        finally:
            progress.close()
            await asyncio.shield(_close(pool, learner))
            for array in shared:
                array.close()
            run_dir.close()

        wall = time.perf_counter() - start
        summary = {
            "global_step": last.get("global_step", 0),
            "updates": learner.version,
            "wall_time_s": wall,
            "sps": last.get("global_step", 0) / wall,
            "episode_return_mean": last.get("episode_return_mean"),
            "episodes": last.get("episodes", 0),
            "final_params_sha256": params_sha256(learner.model),
            "logdir": str(logdir),
        }
        run_dir.save_checkpoint({"model": learner.model.state_dict(), "optimizer": optimizer_state,
                                 "update": learner.version, "config": cfg.to_json_dict()})
        run_dir.write_json(SUMMARY, summary)
        return summary


async def _close(pool: EnvBackend | None, learner: LearnerHandle | None) -> None:
    closing = [c.aclose() for c in (pool, learner) if c is not None]
    await asyncio.gather(*closing)


def _build_model(spec: EnvSpec, cfg: TrainConfig) -> torch.nn.Module:
    obs_dim = 1
    for size in spec.obs_shape:
        obs_dim *= size
    # Initialise from the run seed without disturbing the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
        return MLPActorCritic(obs_dim, spec.num_actions, cfg.hidden)


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
