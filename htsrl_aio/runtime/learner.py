"""The learner: turns one rollout into the next parameters.

`Learner` is the algorithm and runs synchronously; `ThreadLearner` (here) and `ProcessLearner`
(learner_process.py) run it off the event-loop thread behind the same async interface.

It holds two networks. `model` carries the current parameters theta_j, which the optimizer updates
and which are published to inference at the swap. `behaviour` carries the parameters that collected
the rollout being learned (theta_{j-1} in hts mode, theta_j in sync mode); it is refreshed from
inference at every swap.

- PPO runs from the current parameters. By default (`ppo_trust_region="current"`) its clip range is
  centred on them and each sample is weighted by pi_current / pi_behaviour (decoupled PPO); with
  "behaviour" the ratio is taken against the stored behaviour log-probs, as in the released HTS-RL
  code, where the previous update's step eats into the clip range (docs/benchmarks.md, GFootball).
- A2C follows the paper's eq. 6: theta_{j+1} = theta_j - lr * grad L(theta_{j-1}; D_{theta_{j-1}}).
  The gradient is taken on `behaviour`, then applied to `model` by the optimizer.
Bootstrap values come from `behaviour`, like the values stored during collection.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from htsrl_aio.algos import a2c_loss, gae, ppo_loss
from htsrl_aio.config import TrainConfig
from htsrl_aio.errors import TrainingDiverged
from htsrl_aio.runtime.storage import RolloutStorage
from htsrl_aio.seeding import Stream, derive_seed


class Learner:
    def __init__(self, config: TrainConfig, model: nn.Module, behaviour: nn.Module,
                 device: torch.device | str = "cpu") -> None:
        self.config = config
        self.model = model
        self.behaviour = behaviour
        self.device = torch.device(device)
        self.optimizer = _make_optimizer(config, model)
        self.version = 0  # updates applied to `model` so far
        self.behaviour_version = 0  # version of the parameters held in `behaviour`

    def restore(self, version: int, optimizer_state: dict) -> None:
        """Continue from a checkpoint: the update count (it keys minibatch order and the lr) and optimizer."""
        self.version = version
        self.optimizer.load_state_dict(optimizer_state)

    @torch.no_grad()
    def load_behaviour(self, source: nn.Module, version: int) -> None:
        """Record the parameters that collected the rollout about to be learned."""
        for dst, src in zip(self.behaviour.state_dict().values(), source.state_dict().values()):
            dst.copy_(src)
        self.behaviour_version = version

    def update(self, storage: RolloutStorage) -> dict[str, float]:
        """One update on the rollout in `storage`."""
        cfg = self.config
        if cfg.anneal_lr:
            frac = 1.0 - self.version / cfg.num_rollouts
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.lr
        batch = self._batch(storage)
        stats = self._ppo(batch) if cfg.algo == "ppo" else self._a2c(batch)
        self._check_finite([name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()])
        self.version += 1
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        return stats

    def _check_finite(self, bad: list[str]) -> None:
        """Stop before a NaN or Inf reaches the parameters (or right after, naming what broke)."""
        if bad:
            raise TrainingDiverged(
                f"update {self.version + 1}: {', '.join(bad[:3])} became NaN or Inf, so training stopped "
                "(the last good parameters are checkpointed); lower --lr, or check the env's rewards and "
                "observations for NaN.")

    def _batch(self, storage: RolloutStorage) -> dict[str, torch.Tensor]:
        cfg = self.config
        dev = self.device
        obs = torch.from_numpy(storage.obs).to(dev)
        values = torch.from_numpy(storage.values).to(dev)
        with torch.no_grad():
            next_values = torch.cat([values[1:], self.behaviour.value(obs[-1])[None]])
            if storage.truncated_obs:
                slots = sorted(storage.truncated_obs)
                final = torch.from_numpy(np.stack([storage.truncated_obs[s] for s in slots])).to(dev)
                final_values = self.behaviour.value(final)
                for (t, i), v in zip(slots, final_values):
                    next_values[t, i] = v
        terminated = torch.from_numpy(storage.terminated).to(dev)
        episode_end = terminated | torch.from_numpy(storage.truncated).to(dev)
        rewards = torch.from_numpy(storage.rewards).to(dev)
        advantages, returns = gae(rewards, values, next_values, terminated, episode_end,
                                  cfg.gamma, cfg.gae_lambda)
        return {
            "obs": obs[:-1].flatten(0, 1),
            "actions": torch.from_numpy(storage.actions).to(dev).flatten(),
            "logprobs": torch.from_numpy(storage.logprobs).to(dev).flatten(),
            "values": values.flatten(),
            "advantages": advantages.flatten(),
            "returns": returns.flatten(),
        }

    def _ppo(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        size = batch["actions"].shape[0]
        mb_size = size // cfg.minibatches
        order = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.MINIBATCH, self.version))
        old_logprobs, lag_weights = batch["logprobs"], None
        if cfg.ppo_trust_region == "current" and self.behaviour_version != self.version:
            # Decoupled PPO (Hilton et al. 2021): the clip range is centred on the parameters this
            # update starts from, so the previous update does not use up the trust region; the
            # one-update lag is corrected by importance weights current/behaviour instead.
            with torch.no_grad():
                proximal = torch.cat([
                    Categorical(logits=self.model(obs)[0]).log_prob(actions)
                    for obs, actions in zip(batch["obs"].split(mb_size), batch["actions"].split(mb_size))])
            old_logprobs, lag_weights = proximal, (proximal - batch["logprobs"]).exp()
        totals: dict[str, float] = {}
        for _ in range(cfg.epochs):
            perm = torch.randperm(size, generator=order).to(self.device)
            for mb in perm.split(mb_size):
                logits, value = self.model(batch["obs"][mb])
                dist = Categorical(logits=logits)
                advantages = batch["advantages"][mb]
                if cfg.norm_adv:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                if lag_weights is not None:
                    advantages = advantages * lag_weights[mb]
                loss, stats = ppo_loss(dist.log_prob(batch["actions"][mb]), old_logprobs[mb],
                                       advantages, value, batch["values"][mb], batch["returns"][mb],
                                       dist.entropy(), cfg.clip_coef, cfg.clip_vloss, cfg.vf_coef,
                                       cfg.ent_coef)
                self._check_finite([k for k, v in stats.items() if not math.isfinite(v)])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                for key, value_ in stats.items():
                    totals[key] = totals.get(key, 0.0) + value_
        steps = cfg.epochs * cfg.minibatches
        return {key: total / steps for key, total in totals.items()}

    def _a2c(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        logits, value = self.behaviour(batch["obs"])
        dist = Categorical(logits=logits)
        loss, stats = a2c_loss(dist.log_prob(batch["actions"]), batch["advantages"], value,
                               batch["returns"], dist.entropy(), cfg.vf_coef, cfg.ent_coef)
        self._check_finite([k for k, v in stats.items() if not math.isfinite(v)])
        self.behaviour.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.behaviour.parameters(), cfg.max_grad_norm)
        # The delayed gradient: computed at the behaviour parameters, applied to the current ones.
        for param, behaviour_param in zip(self.model.parameters(), self.behaviour.parameters()):
            param.grad = behaviour_param.grad
        self.optimizer.step()
        self.behaviour.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        return stats



class LearnerHandle(Protocol):
    """What the scheduler needs from a learner, wherever it runs."""

    model: nn.Module  # the current parameters; read only at a swap, while the learner is idle
    behaviour: nn.Module  # the parameters that collected the rollout being learned

    @property
    def version(self) -> int: ...

    @property
    def behaviour_version(self) -> int: ...

    def restore(self, version: int, behaviour_version: int, optimizer_state: dict) -> None:
        """Continue from a checkpoint (before start); the parameters are already in `model`."""
        ...

    async def start(self) -> None: ...

    def load_behaviour(self, source: nn.Module, version: int) -> None: ...

    async def update(self, storage: RolloutStorage) -> dict[str, float]: ...

    async def optimizer_state(self) -> dict: ...

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
        self.behaviour = learner.behaviour
        # torch's thread count is per OS thread: unset, the first ops in a new thread run with another
        # count and differ in the last bits, which breaks determinism (tests/test_train.py caught it).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="htsrl-learner",
                                            initializer=torch.set_num_threads,
                                            initargs=(learner.config.torch_threads,))
        self._running: asyncio.Future | None = None

    def restore(self, version: int, behaviour_version: int, optimizer_state: dict) -> None:
        self.learner.restore(version, optimizer_state)
        self.learner.behaviour_version = behaviour_version

    async def start(self) -> None:
        return None

    async def settle(self) -> None:
        await wait_settled(self._running)

    @property
    def version(self) -> int:
        return self.learner.version

    @property
    def behaviour_version(self) -> int:
        return self.learner.behaviour_version

    def load_behaviour(self, source: nn.Module, version: int) -> None:
        self.learner.load_behaviour(source, version)

    async def update(self, storage: RolloutStorage) -> dict[str, float]:
        """Run one update in the learner thread; the loop keeps stepping envs meanwhile."""
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(self._executor, self.learner.update, storage)
        return await asyncio.shield(self._running)

    async def optimizer_state(self) -> dict:
        return self.learner.optimizer.state_dict()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)


async def wait_settled(future: asyncio.Future | None) -> None:
    """Wait for `future` whatever its outcome; its exception (already reported) is consumed."""
    if future is not None:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, eps=1e-5)
    return torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=0.99, eps=1e-5)
