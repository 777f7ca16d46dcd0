"""The learner: turns one rollout into the next parameters.

`Learner` is the algorithm and runs synchronously; `ThreadLearner` (here) and `ProcessLearner`
(learner_process.py) run it off the event-loop thread behind the same async interface.

The learner is the one owner of the parameters. `model` carries the current parameters theta_j, which
the optimizer updates and which are published to inference at the swap. `behaviour` carries the
parameters that collected the rollout being learned (theta_{j-1} in hts mode, theta_j in sync mode):
before each update the learner keeps the parameters it starts from, keyed by their version, and the
schedule names the version that collected a rollout (`use_behaviour`). Only that number crosses at a
swap; no copy of the parameters travels back from inference.

`save()`/`restore()`: what a checkpoint keeps of the learner (update count, current and kept
parameters, optimizer).

The updates themselves are in algos/ (`ppo_update`: decoupled PPO by default, `a2c_update`: the
paper's delayed gradient); the learner keeps their placement, the learning-rate schedule, the
advantage computation and the checks for NaN/Inf. Advantages come from the behaviour critic's values,
stored during collection, except in decoupled PPO (hts, --ppo-trust-region current): there they come
from the critic the update starts from (`_batch`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch
from torch import nn

from htsrl_aio.algos import RolloutBatch, Sequences, a2c_update, gae, ppo_update
from htsrl_aio.config import LearnerSettings
from htsrl_aio.distributions import ActionDistribution
from htsrl_aio.errors import TrainingDiverged
from htsrl_aio.models.compiled import compile_encoders
from htsrl_aio.models.params import clone_params, copy_params
from htsrl_aio.runtime.storage import RolloutStorage
from htsrl_aio.seeding import Stream, derive_seed


class Learner:
    def __init__(self, config: LearnerSettings, model: nn.Module, behaviour: nn.Module,
                 distribution: ActionDistribution, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.model = model
        self.behaviour = behaviour
        self.distribution = distribution
        self.device = torch.device(device)
        self.optimizer = _make_optimizer(config, model)
        self.version = 0  # updates applied to `model` so far
        self.behaviour_version = 0  # version of the parameters held in `behaviour`
        # The parameters the last update started from, and their version: in hts mode they collected
        # the rollout learned next.
        self._kept_version = 0
        self._kept = clone_params(model)
        if config.torch_compile != "none":
            compile_encoders(self.model)
            compile_encoders(self.behaviour)

    def save(self) -> dict[str, Any]:
        """The learner's part of a checkpoint, taken while it is idle."""
        return {"update": self.version, "model": clone_params(self.model),
                "behaviour": {name: tensor.clone() for name, tensor in self._kept.items()},
                "behaviour_version": self._kept_version, "optimizer": self.optimizer.state_dict()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint: parameters, the kept ones, update count (it keys minibatch order
        and the learning rate) and optimizer."""
        copy_params(self.model, state["model"])
        # A stop or final checkpoint keeps no other parameters: its next rollout is collected afresh.
        copy_params(self._kept, state.get("behaviour", state["model"]))
        self.version = state["update"]
        self._kept_version = state.get("behaviour_version", self.version)
        self.optimizer.load_state_dict(state["optimizer"])

    def use_behaviour(self, version: int) -> None:
        """Learn the next rollout as collected by the parameters of `version`: the current ones (sync),
        or the ones the last update started from (hts)."""
        if version == self.version:
            copy_params(self.behaviour, self.model)
        elif version == self._kept_version:
            copy_params(self.behaviour, self._kept)
        else:
            raise RuntimeError(f"the learner holds no parameters of version {version} (it is at "
                               f"{self.version} and kept {self._kept_version}): the schedule broke its "
                               "one-update lag")
        self.behaviour_version = version

    def update(self, storage: RolloutStorage) -> dict[str, float]:
        """One update on the rollout in `storage` (call `use_behaviour` first where the lag varies)."""
        cfg = self.config
        copy_params(self._kept, self.model)
        self._kept_version = self.version
        if cfg.anneal_lr:
            frac = 1.0 - self.version / cfg.num_rollouts
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.lr
        batch = self._batch(storage)
        if cfg.algo == "ppo":
            order = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.MINIBATCH, self.version))
            stats = ppo_update(model=self.model, optimizer=self.optimizer, distribution=self.distribution,
                               batch=batch, order=order, epochs=cfg.epochs, minibatches=cfg.minibatches,
                               clip_coef=cfg.clip_coef, clip_vloss=cfg.clip_vloss, vf_coef=cfg.vf_coef,
                               ent_coef=cfg.ent_coef, max_grad_norm=cfg.max_grad_norm, norm_adv=cfg.norm_adv,
                               check_finite=self._check_stats)
        else:
            stats = a2c_update(model=self.model, behaviour=self.behaviour, optimizer=self.optimizer,
                               distribution=self.distribution, batch=batch, vf_coef=cfg.vf_coef,
                               ent_coef=cfg.ent_coef, max_grad_norm=cfg.max_grad_norm,
                               check_finite=self._check_stats)
        self._check_finite([name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()])
        self.version += 1
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        return stats

    def _check_stats(self, stats: dict[str, float]) -> None:
        self._check_finite([k for k, v in stats.items() if not math.isfinite(v)])

    def _check_finite(self, bad: list[str]) -> None:
        """Stop before a NaN or Inf reaches the parameters (or right after, naming what broke)."""
        if bad:
            raise TrainingDiverged(
                f"update {self.version + 1}: {', '.join(bad[:3])} became NaN or Inf, so training stopped "
                "(the last good parameters are checkpointed); lower --lr, or check the env's rewards and "
                "observations for NaN.")

    def _decoupled(self) -> bool:
        """Decoupled PPO: hts (the update starts one update past the parameters that collected the
        rollout) with --ppo-trust-region current, the update taken relative to where it starts."""
        return (self.config.algo == "ppo" and self.config.ppo_trust_region == "current"
                and self.behaviour_version != self.version)

    def _batch(self, storage: RolloutStorage) -> RolloutBatch:
        """Advantages and returns of the rollout, flattened to (T * N) samples (in sequence order for a
        policy with memory: `Sequences`).

        With --normalize-obs/--normalize-reward the model's running statistics first take in this
        rollout (in (step, env) order, so timing cannot change them).

        In a multi-agent run, the steps of rows whose agent had left the episode (`row_active` False)
        take no part: not in the statistics, not bootstrapped from, not in the batch (with --memory the
        sequences keep them, for the replay to run through, and the losses leave them out).
        """
        cfg = self.config
        dev = self.device
        obs = {key: torch.from_numpy(array).to(dev) for key, array in storage.obs.items()}  # (T + 1, N, ...)
        flat_obs = {key: array[:-1].flatten(0, 1) for key, array in obs.items()}
        last_obs = {key: array[-1] for key, array in obs.items()}
        active = None if storage.row_active is None else torch.from_numpy(storage.row_active).to(dev)
        self.model.update_stats(
            flat_obs if active is None else {key: array[active.flatten()] for key, array in flat_obs.items()})
        sequences = self._sequences(storage)
        order = (lambda x: x.flatten(0, 1)) if sequences is None else sequences.order
        batch_obs = flat_obs if sequences is None else {key: order(array[:-1]) for key, array in obs.items()}
        actions = order(torch.from_numpy(storage.actions).to(dev))
        values = torch.from_numpy(storage.values).to(dev)
        proximal_logprobs = None
        with torch.no_grad():
            if self._decoupled():
                # The current critic has already learned from the previous rollout, which the behaviour
                # critic had not: its values are the better baseline, and the ones the value clip must
                # be centred on. Time-limit bootstraps keep their recorded behaviour values: the final
                # observations they came from are not stored.
                proximal_logprobs, current_values = self._evaluate_current(batch_obs, actions, sequences)
                values = (current_values.view_as(values) if sequences is None
                          else sequences.unorder(current_values, values.shape[1]))
                bootstrap = self._last_value(self.model, last_obs, storage)
            else:
                bootstrap = self._last_value(self.behaviour, last_obs, storage)
        terminated = torch.from_numpy(storage.terminated).to(dev)
        truncated = torch.from_numpy(storage.truncated).to(dev)
        episode_end = terminated | truncated
        next_values = torch.cat([values[1:], bootstrap[None]])
        # No bootstrap from, and no return or trace through, a step that is no transition.
        if active is not None:
            next_active = torch.cat([active[1:], active.new_ones(1, active.shape[1])])
            next_values = torch.where(next_active, next_values, torch.zeros_like(next_values))
            episode_end = episode_end | ~active
        rewards = torch.from_numpy(storage.rewards).to(dev)
        if self.model.return_scaler is not None:
            rewards = self.model.return_scaler.update_and_scale(rewards, episode_end, active)
        # An episode cut by a time limit bootstraps from its final observation's value (recorded at
        # collection by the behaviour parameters), not from the reset observation that follows.
        next_values = torch.where(truncated, torch.from_numpy(storage.bootstrap_values).to(dev), next_values)
        advantages, returns = gae(rewards, values, next_values, terminated, episode_end,
                                  cfg.gamma, cfg.gae_lambda)
        batch = RolloutBatch(batch_obs, actions, order(torch.from_numpy(storage.logprobs).to(dev)),
                             order(values), order(advantages), order(returns), proximal_logprobs,
                             None if sequences is None else sequences.start_states,
                             None if sequences is None else sequences.starts)
        if active is None:
            return batch
        if sequences is not None:  # the replay runs through absent steps; the losses leave them out
            return dataclasses.replace(batch, active=order(active))
        return batch.rows(active.flatten().nonzero()[:, 0])

    def _sequences(self, storage: RolloutStorage) -> Sequences | None:
        """How a policy with memory replays the rollout: each env's rollout, or --bptt chunks of it."""
        if storage.memory is None:
            return None
        return Sequences.cut(torch.from_numpy(storage.memory).to(self.device),
                             torch.from_numpy(storage.episode_starts).to(self.device),
                             self.config.bptt or storage.rollout_len)

    def _last_value(self, model: nn.Module, last_obs: dict[str, torch.Tensor],
                    storage: RolloutStorage) -> torch.Tensor:
        """The value of the observation after the rollout (the bootstrap): with memory, from the state
        collection carried into it."""
        if storage.memory is None:
            return model.value(last_obs)
        state = torch.from_numpy(storage.memory[-1]).to(self.device)
        return model.step(last_obs, state, torch.from_numpy(storage.episode_starts[-1]).to(self.device))[1]

    def _evaluate_current(self, obs: dict[str, torch.Tensor], actions: torch.Tensor,
                          sequences: Sequences | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of `actions` and values under the current parameters, a minibatch's worth of
        samples (or of sequences) at a time (one forward over a large rollout would hold all its
        activations at once)."""
        units = actions.shape[0] if sequences is None else sequences.start_states.shape[0]
        length = 1 if sequences is None else sequences.length
        size = units // self.config.minibatches
        logprobs, values = [], []
        for start in range(0, units, size):
            rows = slice(start * length, (start + size) * length)
            part = {key: array[rows] for key, array in obs.items()}
            if sequences is None:
                params, value = self.model(part)
            else:
                params, value = self.model.unroll(part, sequences.start_states[start:start + size],
                                                  sequences.starts[rows])
            logprobs.append(self.distribution.log_prob(params, actions[rows]))
            values.append(value)
        return torch.cat(logprobs), torch.cat(values)


class LearnerHandle(Protocol):
    """What the scheduler and the checkpoints need from a learner, wherever it runs."""

    model: nn.Module  # the current parameters; read only at a swap, while the learner is idle

    @property
    def version(self) -> int: ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's learner part (before start)."""
        ...

    async def start(self) -> None: ...

    async def update(self, storage: RolloutStorage, behaviour_version: int) -> dict[str, float]:
        """Learn the rollout in `storage`, collected by the parameters of `behaviour_version`."""
        ...

    async def save(self) -> dict[str, Any]:
        """The learner's part of a checkpoint, taken while it is idle."""
        ...

    async def settle(self) -> None:
        """Wait for an update still running after its caller was cancelled, so state is consistent."""
        ...

    async def aclose(self) -> None: ...


class ThreadLearner:
    """Runs a Learner in one thread of this process (torch releases the GIL inside its kernels).

    The right placement with a GPU, where one process should own the CUDA context; on a CPU with a
    small network the learner's Python overhead competes with the event loop for the GIL, and
    `ProcessLearner` is faster.
    """

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.model = learner.model
        # torch's thread count is per OS thread: unset, the first ops in a new thread run with another
        # count and differ in the last bits, which breaks determinism (tests/test_train.py caught it).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="htsrl-learner",
                                            initializer=torch.set_num_threads,
                                            initargs=(learner.config.torch_threads,))
        self._running: asyncio.Future | None = None

    def restore(self, state: Mapping[str, Any]) -> None:
        self.learner.restore(state)

    async def start(self) -> None:
        return None

    async def settle(self) -> None:
        await wait_settled(self._running)

    @property
    def version(self) -> int:
        return self.learner.version

    async def update(self, storage: RolloutStorage, behaviour_version: int) -> dict[str, float]:
        """Run one update in the learner thread; the loop keeps stepping envs meanwhile."""
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(self._executor, learn, self.learner, storage, behaviour_version)
        return await asyncio.shield(self._running)

    async def save(self) -> dict[str, Any]:
        return self.learner.save()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)


def learn(learner: Learner, storage: RolloutStorage, behaviour_version: int) -> dict[str, float]:
    """One update of `learner` on `storage`, collected by the parameters of `behaviour_version`."""
    learner.use_behaviour(behaviour_version)
    return learner.update(storage)


async def wait_settled(future: asyncio.Future | None) -> None:
    """Wait for `future` whatever its outcome; its exception (already reported) is consumed."""
    if future is not None:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()


def _make_optimizer(config: LearnerSettings, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, eps=1e-5)
    return torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=0.99, eps=1e-5)


def use_deterministic_algorithms(mode: bool) -> None:
    """`torch.use_deterministic_algorithms(mode)`, without loading torch._inductor when it is not loaded.

    torch's function imports torch._inductor.config (some 800 modules, sympy among them: 1.5 CPU
    seconds in each process that sets it, a fifth of a small run's start-up) to set a flag that only
    torch.compile reads, and htsrl-aio compiles nothing. Where torch.compile is loaded already, or the
    internal setter has gone, the public function sets both.
    """
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode)
    else:
        set_flag(mode)
