"""Composition of one run: every part built from a config and, on resume, a checkpoint.

`assemble` resolves the env and the settings, opens the run directory, builds the model and its
copies (all from the same parameters: the released code's third bug), the shared memory, inference,
the learner, the env backend and the schedule, and restores each self-saving component from the
checkpoint. Everything it starts is registered on the caller's exit stack, so however the run ends,
no process or shared-memory block outlives it. The life cycle is `Trainer`'s (trainer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from htsrl_aio.backends.protocol import BackendArgs, EnvBackend
from htsrl_aio.backends.registry import BACKENDS, backend_name, make_backend
from htsrl_aio.backends.replica_states import ReplicaStates
from htsrl_aio.checkpoint import Checkpoint, library_versions
from htsrl_aio.config import RESUME_OVERRIDABLE, TrainConfig, available_cores
from htsrl_aio.distributions import ActionDistribution, make_distribution
from htsrl_aio.envs import probe_env, resolve_env
from htsrl_aio.envs.factory import EnvSpec
from htsrl_aio.errors import ConfigError
from htsrl_aio.ipc.children import start_resource_tracker
from htsrl_aio.ipc.limits import ensure_open_files
from htsrl_aio.ipc.shm import remove_stale_segments
from htsrl_aio.models import build_model, load_params, uses_cnn
from htsrl_aio.models.compiled import check_compilable, compile_encoders
from htsrl_aio.outputs.metrics import MetricsSinks
from htsrl_aio.outputs.progress import ProgressLine
from htsrl_aio.outputs.run_dir import CONFIG, ERROR_LOG, USER_SETTINGS, RunDirectory, default_logdir
from htsrl_aio.outputs.tensorboard import ScalarLog
from htsrl_aio.outputs.trackers import open_trackers, require_packages
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.learner import Learner, LearnerHandle, ThreadLearner, use_deterministic_algorithms
from htsrl_aio.runtime.learner_process import ProcessLearner
from htsrl_aio.runtime.memory import RunMemory
from htsrl_aio.runtime.scheduler import RolloutScheduler
from htsrl_aio.runtime.tickets import TicketNoise


@dataclass(frozen=True)
class RunHooks:
    """What the run calls back into its owner (the Trainer)."""

    on_update: Callable[[dict[str, Any]], None]  # each update's metrics row
    on_swap: Callable[[int, bool], Awaitable[None]]  # checkpoint inside swap g (stopping or not)
    on_run_dir: Callable[[Path], None]  # the run directory exists (config.json written)

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    """The parts of one run, built and (on resume) restored; each owns its own state."""

    cfg: TrainConfig  # resolved
    spec: EnvSpec
    run_dir: RunDirectory
    sinks: MetricsSinks
    inference: BatchedInference
    learner: LearnerHandle
    backend: EnvBackend
    replicas: ReplicaStates
    scheduler: RolloutScheduler
    resume_note: dict[str, Any]  # what the first metrics row after a resume says about it

    async def save(self, generation: int | None) -> dict[str, Any]:
        """Every component's part of a checkpoint: inside swap `generation` all of them (they resume
        exactly); outside a swap (None) the learner's and the schedule's. `assemble` restores them: a
        new component is saved here and restored there."""
        parts = {**await self.learner.save(), **self.scheduler.save(generation)}
        if generation is not None:
            parts.update(await self.replicas.save())
        return parts


async def assemble(config: TrainConfig, user: dict[str, Any] | None, resume: Checkpoint | None,
                   stack: contextlib.AsyncExitStack, hooks: RunHooks) -> RunParts:
    """Build a run of `config` (resolved here; `user`: the settings the user gave), or continue `resume`;
    register every cleanup on `stack`."""
    cfg = config.resolved()
    require_packages(cfg)  # a tracker's missing package, before anything starts
    remove_stale_segments()  # left by runs killed with their resource tracker; their pids are dead
    start_resource_tracker()
    ensure_open_files(cfg.workers or 1)
    factory = resolve_env(cfg.env, cfg)
    factory, spec = await probe_env(factory, cfg.env_timeout or None)
    cfg = cfg.fitted_to_model(uses_cnn(spec, cfg), cfg.num_envs * spec.rows_per_env)
    backend_kind = backend_name(cfg.env_backend, factory, spec, cfg.env_timeout)
    _check_multi_agent(cfg, spec)
    rows = cfg.num_envs * spec.rows_per_env  # a multi-agent env's agents are rows of the storage
    device = resolve_device(cfg.device)
    check_compilable(cfg.torch_compile, agents=bool(spec.agents), deterministic=cfg.deterministic,
                     device_type=device.type)
    if (warning := oversubscription_warning(cfg, device, available_cores())) is not None:
        warnings.warn(warning, RuntimeWarning, stacklevel=3)
    run_dir, sinks, config_json = _open_outputs(cfg, user, factory.name, resume, backend_kind, device, stack)
    hooks.on_run_dir(run_dir.path)
    stack.enter_context(_torch_settings(cfg, device))

    model = build_model(spec, cfg)
    if resume is not None:
        load_params(model, resume.model, str(resume.path), f"env {factory.name!r} ({spec.describe()})")
    model = model.to(device)
    distribution = make_distribution(spec.action)
    noise = TicketNoise(cfg.seed, rows, cfg.rollout, distribution.noise_size, distribution.noise)
    obs_arrays = spec.obs.arrays()
    inference_model = copy.deepcopy(model)
    if cfg.torch_compile == "all":
        compile_encoders(inference_model)
    inference = BatchedInference(inference_model, distribution, noise, cfg.max_batch, obs_arrays,
                                 block=cfg.inference_block if cfg.deterministic else None, device=device)
    memory = RunMemory(rows, cfg.rollout, obs_arrays, spec.action.shape, spec.action.dtype,
                       model.state_size, agents=bool(spec.agents))
    stack.callback(memory.close)
    learner = _make_learner(cfg, model, distribution, memory, device)
    backend = make_backend(backend_kind, BackendArgs(
        factory, spec, rows, cfg.rollout, cfg.seed, memory.obs_buffers, cfg.workers, cfg.engine_batch,
        cfg.engine_threads, cfg.on_env_error == "restart", functools.partial(_log_restart, run_dir),
        env_timeout=cfg.env_timeout or None,
        ray_address=cfg.ray_address, ray_actors=cfg.ray_actors, envs_per_actor=cfg.envs_per_actor))
    stack.push_async_callback(backend.aclose)
    stack.push_async_callback(learner.aclose)
    if resume is not None:
        learner.restore(resume.parts)
    await asyncio.gather(backend.start(), learner.start())
    if resume is None:  # the start is accepted: only now may what an earlier start here left go
        run_dir.clear_leftovers()
    if resume is None and (note := cfg.rounded_steps_note()) is not None:
        log.warning("%s", note)  # once the start is accepted, and not again on resume
    if spec.state_source:
        log.info("--critic global: %s.", spec.describe_state())
    placement = getattr(backend, "placement", None)
    if placement is not None:  # known once the backend has started (Ray: its actors and nodes)
        config_json = {**config_json, "env_runs": placement}
        run_dir.write_json(CONFIG, config_json)
    # Once the start is accepted: a refused start leaves no tracker run behind.
    sinks.add_trackers(open_trackers(cfg, run_dir, config_json, resumed=resume is not None))

    scheduler = RolloutScheduler(cfg, backend, memory.storages, memory.final_obs, inference, learner,
                                 hooks.on_update, checkpoint=hooks.on_swap,
                                 checkpoint_every=cfg.checkpoint_every, agents=spec.rows_per_env)
    replicas = ReplicaStates(backend, rows)
    resume_note = {} if resume is None else await _restore(resume, replicas, scheduler)
    steps_per_rollout = cfg.num_envs * cfg.rollout
    progress = ProgressLine(cfg.num_rollouts * steps_per_rollout, cfg.progress, f"{cfg.mode}/{cfg.algo}",
                            initial=scheduler.start.rollout * steps_per_rollout)
    sinks.add_progress(progress)
    return RunParts(cfg, spec, run_dir, sinks, inference, learner, backend, replicas, scheduler, resume_note)


def _check_multi_agent(cfg: TrainConfig, spec: EnvSpec) -> None:
    """Multi-agent flags given for a single-agent env, refused in one sentence. (Every backend that hosts
    a Python env hosts multi-agent ones: process, loop, ray; the engine backend hosts only ALE and
    EnvPool ids, and `backend_name` refuses it for any other env.)"""
    if spec.agents:
        return
    if cfg.agent_id:
        raise ConfigError(f"--agent-id applies to multi-agent envs (PettingZoo ParallelEnv), and "
                          f"{cfg.env!r} has one agent; drop it.")
    if cfg.critic == "global":
        raise ConfigError(f"--critic global gives the value head the global state of a multi-agent env "
                          f"(PettingZoo ParallelEnv), and {cfg.env!r} has one agent, whose observation "
                          "is all the critic can read; drop --critic global.")


def _make_learner(cfg: TrainConfig, model: torch.nn.Module, distribution: ActionDistribution,
                  memory: RunMemory, device: torch.device) -> LearnerHandle:
    # On a GPU the learner is a thread whatever --learner says: one process owns the CUDA context.
    if cfg.learner == "process" and device.type == "cpu":
        return ProcessLearner(cfg.learner_settings(), model, distribution, memory.specs)
    return ThreadLearner(Learner(cfg.learner_settings(), model, copy.deepcopy(model), distribution, device))


async def _restore(resume: Checkpoint, replicas: ReplicaStates,
                   scheduler: RolloutScheduler) -> dict[str, Any]:
    """Put the env replicas and the schedule back (the learner restored itself before it started);
    return what the first metrics row after the resume says about it."""
    not_restored = await replicas.restore(resume.parts, resume.update)
    scheduler.restore(resume.kind, resume.parts, envs_restored=not_restored is None)
    return {"resumed_from_update": resume.update,
            "resume_envs": "restored" if scheduler.start.envs_restored
            else f"restarted with new derived seeds: {not_restored or 'no env states'}"}


def _open_outputs(cfg: TrainConfig, user: dict[str, Any] | None, env_name: str, resume: Checkpoint | None,
                  backend_kind: str, device: torch.device, stack: contextlib.AsyncExitStack
                  ) -> tuple[RunDirectory, MetricsSinks, dict[str, Any]]:
    """The run directory (new, or reopened at the checkpoint's update), config.json and the sinks.
    config.json keeps the settings the user gave too: a run stopped before its first checkpoint starts
    again from them (`checkpointing.resume_point`)."""
    if resume is None:
        logdir = Path(cfg.logdir or default_logdir(env_name, cfg.algo, cfg.mode, cfg.seed))
        run_dir = RunDirectory.create(logdir)
    else:
        logdir = Path(cfg.logdir)
        run_dir = RunDirectory.reopen(logdir, resume.update, resume.config, RESUME_OVERRIDABLE)
    stack.callback(run_dir.close)
    resume_step = None if resume is None else resume.update * cfg.num_envs * cfg.rollout + 1
    scalars = ScalarLog(logdir, cfg.tensorboard, resume_step)
    sinks = MetricsSinks(run_dir, [scalars])
    stack.callback(sinks.close)
    # Not compared on resume (only the settings are): a run may resume on another machine.
    config_json = {**cfg.to_json_dict(), "logdir": str(logdir), "tensorboard": scalars.status,
                   "env_runs": BACKENDS[backend_kind].placement(cfg),
                   "determinism": determinism_note(cfg, device), USER_SETTINGS: user,
                   "versions": library_versions()}
    run_dir.write_json(CONFIG, config_json)
    return run_dir, sinks, config_json


def _log_restart(run_dir: RunDirectory, message: str, details: str) -> None:
    """The terminal gets one line per env restart; error.log gets the traceback too."""
    run_dir.append_text(ERROR_LOG, f"{message}\n{details}\n")
    log.warning("%s", message)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto.")
    return torch.device(name)


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


def determinism_note(cfg: TrainConfig, device: torch.device) -> str:
    if not cfg.deterministic:
        return "off: inference batches are not padded, results may depend on timing and batch make-up"
    if device.type == "cuda":
        return ("best effort on CUDA: padded batches and deterministic algorithms, but GPU kernels are not "
                "guaranteed bit-identical across runs")
    if torch.backends.mkl.is_available() and "STRICT" not in os.environ.get("MKL_CBWR", "").upper():
        return (f"not guaranteed: MKL_CBWR={os.environ.get('MKL_CBWR', '')} is not strict, and MKL then may "
                "round differently from run to run (unset it, or use AUTO,STRICT as htsrl_aio does)")
    return ("bit-identical across workers, max_batch and timing (CPU; same torch_threads, inference_block "
            "and torch_compile)")


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Apply the run's torch thread count and determinism, restoring the caller's afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic and device.type == "cuda":
        # Deterministic cuBLAS needs a fixed workspace, read when the first handle is made; without
        # it torch refuses every matrix product under use_deterministic_algorithms.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(cfg.torch_threads)
    use_deterministic_algorithms(cfg.deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        use_deterministic_algorithms(deterministic)
