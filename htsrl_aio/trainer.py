"""Trainer: the life cycle of one training run, as an async context manager in the caller's event loop.

    async with Trainer(config) as trainer:
        async for metrics in trainer.updates():   # one dict per update, as in metrics.jsonl
            ...
    # or: summary = await trainer.run()

Its parts are built by assembly.py and checkpointed by checkpointing.py; the trainer starts, stops
and cancels them, and guarantees that however the run ends (finished, failed, cancelled), no worker
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
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from htsrl_aio import checkpoint
from htsrl_aio.assembly import RunHooks, RunParts, assemble
from htsrl_aio.backends.protocol import EnvBackend
from htsrl_aio.checkpointing import RunCheckpoints, resume_point, stop_note, swap_stop_note
from htsrl_aio.config import TrainConfig
from htsrl_aio.envs.action_masks import ACTION_MASK_KEY, with_mask
from htsrl_aio.envs.factory import EnvSpec, agent_observation
from htsrl_aio.errors import HtsrlError, limit_error
from htsrl_aio.models import PolicyMemory, params_sha256
from htsrl_aio.outputs.metrics import END_OF_RUN
from htsrl_aio.outputs.run_dir import ERROR_LOG, SUMMARY, CheckpointWriteError
from htsrl_aio.seeding import Stream, generator


class RunStopped(Exception):
    """The run stopped at a swap, as asked (`Trainer.stop_at_next_swap`), after a checkpoint that resumes
    exactly; the message says which."""


class Trainer:
    def __init__(self, config: TrainConfig, *, resume_from: checkpoint.Checkpoint | None = None,
                 user_settings: dict[str, Any] | None = None) -> None:
        """Use `Trainer.resume(path)` to continue a run; `resume_from` is a loaded checkpoint, and
        `user_settings` the settings the user gave, where `config` is already resolved."""
        self.config = config
        self._resume = resume_from
        self._user = (user_settings if user_settings is not None else config.user_settings()
                      if resume_from is None else resume_from.user_config)
        self.summary: dict[str, Any] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task | None = None
        self._parts: RunParts | None = None
        self._checkpoints: RunCheckpoints | None = None
        self._failure: HtsrlError | None = None
        self._stop_timer: asyncio.TimerHandle | None = None
        self._stop_timed_out = False
        self._stopped_at_swap = False  # the swap checkpoint of a requested stop is written
        self._last: dict[str, Any] = {}  # the last update's metrics
        # How an early stop ended: which checkpoint holds the run, and how it resumes. Until this session
        # writes one, a resumed run is where the checkpoint it resumed from left it.
        self.stop_note = "" if resume_from is None else (
            "stopped before its first update since resuming; the run stays at update "
            f"{resume_from.update}, its checkpoints unchanged")

    @classmethod
    def resume(cls, path: str | Path, **overrides: Any) -> Trainer:
        """A Trainer that continues the run in run directory `path` (from its newest resumable
        checkpoint) or from the checkpoint file `path`, to its configured total steps.

        `overrides` may change only settings that leave results unchanged (RESUME_OVERRIDABLE).
        """
        config, state, user = resume_point(Path(path), overrides)
        return cls(config, resume_from=state, user_settings=user)

    async def __aenter__(self) -> Trainer:
        try:
            hooks = RunHooks(self._record, self._at_swap, self._on_run_dir)
            self._parts = await assemble(self.config, self._user, self._resume, self._stack, hooks)
            self._checkpoints = RunCheckpoints(self._parts, self._user)
            self._act_rng = generator(self.cfg.seed, Stream.HOST_ACT)  # act()'s own: training never sees it
            self._stack.push_async_callback(self._checkpoints.drain)  # before the run directory closes
        except BaseException as exc:
            await self._stack.aclose()
            error = limit_error(exc)  # too few files, processes or memory for the run: name the limit
            if error is not None:
                raise error from None
            raise
        return self

    def _on_run_dir(self, path: Path) -> None:
        if self._resume is None:
            self.stop_note = (f"stopped before its first update; --resume {path} starts it again from the "
                              "beginning")

    @property
    def backend(self) -> EnvBackend:
        """Where the env replicas run (available once started)."""
        assert self._parts is not None, "use `async with Trainer(...)` first"
        return self._parts.backend

    @property
    def cfg(self) -> TrainConfig:
        """The resolved settings of the run (available once started)."""
        assert self._parts is not None, "use `async with Trainer(...)` first"
        return self._parts.cfg

    def stop_at_next_swap(self) -> bool:
        """Stop at the next swap: every env finishes its rollout and the learner its update, a checkpoint
        that resumes exactly is written (checkpoints/ and checkpoint.pt), and `run()` raises RunStopped.
        If that takes longer than `stop_timeout` seconds, the run is cancelled instead (the stop
        checkpoint of the last completed update). False when training has not started: cancel instead.
        """
        if self._task is None or self._task.done() or self._parts is None:
            return False
        if self._stop_timer is None:
            self._parts.scheduler.request_stop()
            self._stop_timer = asyncio.get_running_loop().call_later(self.cfg.stop_timeout, self._stop_now)
        return True

    def _stop_now(self) -> None:
        if self._task is not None and not self._task.done():
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
            if self.summary is None and self._checkpoints is not None and not self._stopped_at_swap:
                await self._save_stop_checkpoint()
        finally:
            await asyncio.shield(self._stack.aclose())

    async def _save_stop_checkpoint(self) -> None:
        assert self._checkpoints is not None
        try:
            saved = await self._checkpoints.at_stop(self._failure)
        except CheckpointWriteError:
            if self._failure is None:
                raise
            return  # already failing (perhaps for the same full disk): that failure is the one to report
        if saved is not None:
            self.stop_note = stop_note(saved, self.cfg.stop_timeout if self._stop_timed_out else None)

    async def _at_swap(self, generation: int, stopping: bool) -> None:
        assert self._checkpoints is not None and self._parts is not None
        await self._checkpoints.at_swap(generation, stopping)
        if stopping:
            self._stopped_at_swap = True
            self.stop_note = swap_stop_note(self._parts.learner.version, generation)

    def _record(self, metrics: dict[str, Any]) -> None:
        assert self._parts is not None and self._checkpoints is not None
        metrics.update(self._parts.resume_note)  # the first update after a resume says how it resumed
        self._parts.resume_note = {}
        self._checkpoints.after_update(metrics["update"])
        self._last = metrics
        self._parts.sinks.write(metrics)

    async def _train(self) -> dict[str, Any]:
        assert self._parts is not None and self._checkpoints is not None
        p = self._parts
        start, steps_before = time.perf_counter(), p.scheduler.start.rollout * p.cfg.num_envs * p.cfg.rollout
        try:
            await p.scheduler.run()
            if p.scheduler.stopped_at is not None:
                raise RunStopped(self.stop_note)
            await self._checkpoints.at_end()
        except HtsrlError as exc:
            self._failure = exc
            # The terminal gets one sentence; the details (a worker's traceback) go to the run directory.
            p.run_dir.write_text(ERROR_LOG, f"{exc}\n\n{exc.details}")
            raise
        finally:
            p.sinks.end()
        wall, steps = time.perf_counter() - start, self._last.get("global_step", 0)
        # wall_time_s and sps are this session's; after a resume the run_ ones count every session.
        run_wall = p.scheduler.start.wall_time_s + wall
        self.summary = {
            "global_step": steps, "updates": p.learner.version, "wall_time_s": wall,
            "sps": (steps - steps_before) / wall, "session_steps": steps - steps_before,
            "run_wall_time_s": run_wall, "run_sps": steps / run_wall,
            "episode_return_mean": self._last.get("episode_return_mean"),
            "episodes": self._last.get("episodes", 0), "final_params_sha256": params_sha256(p.learner.model),
            "logdir": str(p.run_dir.path)}
        p.run_dir.write_json(SUMMARY, self.summary)
        p.sinks.finish(self.summary)
        return self.summary

    def _start(self) -> asyncio.Task:
        if self._task is None:
            self._task = asyncio.ensure_future(self._train())
        return self._task

    async def updates(self) -> AsyncIterator[dict[str, Any]]:
        """Train, yielding each update's metrics (the keys of metrics.jsonl) as it completes."""
        assert self._parts is not None, "use `async with Trainer(...)` first"
        stream = self._parts.sinks.stream()
        task = self._start()
        while (item := await stream.get()) is not END_OF_RUN:
            yield item
        await task  # re-raise whatever ended the run early

    async def run(self) -> dict[str, Any]:
        """Train to the end and return the summary (also written to summary.json)."""
        return await self._start()

    def new_memory(self) -> PolicyMemory:
        """An empty recurrent state for one env of the host application (see `act`)."""
        assert self._parts is not None, "use `async with Trainer(...)` first"
        return PolicyMemory(self._parts.inference.model.state_size)

    async def act(self, obs: Any, deterministic: bool = False,
                  memory: PolicyMemory | dict[str, PolicyMemory] | None = None,
                  action_mask: Any = None) -> Any:
        """The current policy's action for one observation, as `env.step` takes it (an int for a
        Discrete space), for the host application; for a multi-agent env, the actions (a dict by
        agent) for a dict of agents' observations, as the ParallelEnv's `step` takes them.

        A policy with memory (--memory) needs the env's state: pass `memory=trainer.new_memory()` for
        each env (a dict of them by agent for a multi-agent env), the same object at every step of it,
        and call its `reset()` when an episode ends.
        A run whose env offers a legal-action mask through `action_masks()` or an info needs it here:
        pass `action_mask=` (a dict of them by agent for a multi-agent env's `infos[agent]` masks; a
        mask in the observation, as its `action_mask` key, is already there).
        Uses the parameters collection currently acts with, and a random stream of its own, so
        calling it never changes the training run.
        """
        assert self._parts is not None, "use `async with Trainer(...)` first"
        spec = self._parts.spec
        if not spec.agents:
            if isinstance(memory, dict):
                raise ValueError("memory is a dict, which act() takes for a multi-agent env's agents; pass "
                                 "this env's trainer.new_memory()")
            return self._act(_masked(spec, obs, action_mask), deterministic, memory)
        if action_mask is not None and not isinstance(action_mask, dict):
            raise ValueError("act() of a multi-agent run takes action_mask as a dict by agent, each agent's "
                             "info['action_mask']")
        if not (isinstance(obs, dict) and obs and set(obs) <= set(spec.agents)):
            raise ValueError(f"act() of a multi-agent run takes a dict of observations by agent (agents "
                             f"{list(spec.agents)}), got {type(obs).__name__}"
                             f"{' with keys ' + str(list(obs)) if isinstance(obs, dict) else ''}")
        if memory is not None and not isinstance(memory, dict):
            raise ValueError("act() of a multi-agent run takes memory as a dict by agent, each agent's "
                             "trainer.new_memory()")
        memories, masks = memory or {}, action_mask or {}
        masked = {agent: _masked(spec, agent_obs, masks.get(agent)) for agent, agent_obs in obs.items()}
        return {agent: self._act(agent_observation(spec, masked, agent), deterministic, memories.get(agent))
                for agent in obs}

    def _act(self, obs: Any, deterministic: bool, memory: PolicyMemory | None) -> Any:
        assert self._parts is not None
        spec, inference = self._parts.spec, self._parts.inference
        if memory is None:
            if inference.model.state_size:
                raise ValueError("this policy has memory (--memory): pass memory=trainer.new_memory(), one "
                                 "for each env, and call its reset() when the env's episode ends")
            memory = self.new_memory()
        encoded = spec.policy_obs.encode(obs, "the observation given to act()")
        params, state = inference.act_alone({key: array[None] for key, array in encoded.items()},
                                            memory.state, memory.start)
        memory.advance(state.numpy())
        action = inference.distribution.choose(params, None if deterministic else self._act_rng)
        return spec.action.to_env(action[0].numpy())


def _masked(spec: EnvSpec, obs: Any, action_mask: Any) -> Any:
    """`obs` as a single-agent run's layout reads it: with `action_mask` as its mask key, where given."""
    has_key = isinstance(obs, dict) and ACTION_MASK_KEY in obs
    if spec.obs.mask_key is None:
        if action_mask is not None:
            raise ValueError("this run applies no action mask (its env offers none, or --action-mask off); "
                             "drop action_mask=")
        return obs
    if action_mask is None:
        if not has_key:
            raise ValueError("this run's actions are masked (its env offers a legal-action mask): pass "
                             "action_mask=, the env's mask for this step (env.action_masks() or "
                             "info['action_mask'])")
        return obs
    if has_key:
        raise ValueError("the observation already carries an 'action_mask' key; drop action_mask=")
    return with_mask(obs, action_mask)
