"""Losses and advantages against values worked out by hand, and the A2C delayed gradient."""

import copy
import math

import numpy as np
import pytest
import torch
from harness import VECTOR_SPEC, small_model, storage_for

from htsrl_aio.algos import RolloutBatch, a2c_loss, gae, ppo_loss
from htsrl_aio.config import TrainConfig
from htsrl_aio.distributions import make_distribution
from htsrl_aio.models import ActorCritic
from htsrl_aio.runtime.learner import Learner
from htsrl_aio.runtime.storage import RolloutStorage

DIST = make_distribution(VECTOR_SPEC.action)

B = torch.tensor


def test_gae_matches_hand_computation_with_termination_and_truncation():
    gamma, lam = 0.9, 0.8
    # One env, 4 steps: step 1 terminates, step 2 is truncated (bootstraps from its final obs value 5).
    rewards = B([[1.0], [2.0], [3.0], [4.0]])
    values = B([[0.5], [1.0], [1.5], [2.0]])
    next_values = B([[1.0], [1.5], [5.0], [3.0]])  # v1, v2, v(final obs of step 2), bootstrap
    terminated = B([[False], [True], [False], [False]])
    episode_end = B([[False], [True], [True], [False]])
    adv, ret = gae(rewards, values, next_values, terminated, episode_end, gamma, lam)
    d3 = 4.0 + 0.9 * 3.0 - 2.0
    d2 = 3.0 + 0.9 * 5.0 - 1.5
    d1 = 2.0 + 0.0 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a3 = d3
    a2 = d2  # truncation cuts the trace: nothing from step 3 leaks into step 2
    a1 = d1
    a0 = d0 + gamma * lam * a1
    torch.testing.assert_close(adv, B([[a0], [a1], [a2], [a3]]))
    torch.testing.assert_close(ret, adv + values)


def test_gae_with_lambda_one_is_the_n_step_return():
    rewards = B([[1.0], [1.0], [1.0]])
    values = B([[0.0], [0.0], [0.0]])
    next_values = B([[0.0], [0.0], [10.0]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    _, ret = gae(rewards, values, next_values, no, no, 0.5, 1.0)
    torch.testing.assert_close(ret, B([[1 + 0.5 + 0.25 + 0.125 * 10], [1 + 0.5 + 0.25 * 10], [1 + 0.5 * 10]]))


def test_ppo_loss_pieces():
    old_logp = B([math.log(0.5), math.log(0.5)])
    new_logp = B([math.log(0.8), math.log(0.2)])  # ratios 1.6 and 0.4
    adv = B([1.0, -1.0])
    new_v, old_v, ret = B([2.0, 0.0]), B([1.0, 0.0]), B([3.0, 1.0])
    entropy = B([0.7, 0.5])
    loss, stats = ppo_loss(new_logp, old_logp, adv, new_v, old_v, ret, entropy, clip_coef=0.2,
                           clip_vloss=True, vf_coef=0.5, ent_coef=0.01)
    # pg: max(-A r, -A clip(r)) -> env0: max(-1.6, -1.2) = -1.2; env1: max(0.4, 0.8) = 0.8
    pg = (-1.2 + 0.8) / 2
    # value: clipped v = old + clamp(new-old, +-0.2) -> env0: 1.2; losses max((2-3)^2, (1.2-3)^2) = 3.24
    #        env1: new == old -> (0-1)^2 = 1
    v = 0.5 * (3.24 + 1.0) / 2
    assert stats["pg_loss"] == pytest.approx(pg)
    assert stats["v_loss"] == pytest.approx(v)
    assert stats["clipfrac"] == pytest.approx(1.0)
    assert loss.item() == pytest.approx(pg + 0.5 * v - 0.01 * 0.6)


def test_entropy_is_a_bonus_in_both_losses():
    logp, adv, v, ret = B([-0.7]), B([0.0]), B([0.0]), B([0.0])
    low, _ = a2c_loss(logp, adv, v, ret, B([0.1]), vf_coef=0.5, ent_coef=0.1)
    high, _ = a2c_loss(logp, adv, v, ret, B([1.0]), vf_coef=0.5, ent_coef=0.1)
    assert high < low
    low, _ = ppo_loss(logp, logp, adv, v, v, ret, B([0.1]), 0.2, True, 0.5, 0.1)
    high, _ = ppo_loss(logp, logp, adv, v, v, ret, B([1.0]), 0.2, True, 0.5, 0.1)
    assert high < low


def test_a2c_loss_pieces():
    logp, adv = B([-1.0, -2.0]), B([2.0, -1.0])
    v, ret, ent = B([1.0, 0.0]), B([2.0, 2.0]), B([0.5, 0.3])
    loss, stats = a2c_loss(logp, adv, v, ret, ent, vf_coef=0.5, ent_coef=0.01)
    pg = -(2.0 * -1.0 + -1.0 * -2.0) / 2
    vl = 0.5 * (1.0 + 4.0) / 2
    assert stats["pg_loss"] == pytest.approx(pg)
    assert stats["v_loss"] == pytest.approx(vl)
    assert loss.item() == pytest.approx(pg + 0.5 * vl - 0.01 * 0.4)


def _storage(seed: int) -> RolloutStorage:
    rng = np.random.default_rng(seed)
    storage = storage_for(VECTOR_SPEC, 0, num_envs=3, rollout_len=5)
    storage.obs["obs"][:] = rng.standard_normal((6, 3, 4))
    storage.actions[:] = rng.integers(0, 2, (5, 3))
    storage.rewards[:] = rng.standard_normal((5, 3))
    storage.values[:] = rng.standard_normal((5, 3))
    storage.terminated[2, 1] = True
    return storage


def test_a2c_gradient_is_taken_at_the_behaviour_parameters():
    cfg = TrainConfig(algo="a2c", num_envs=3, rollout=5, total_steps=15, max_grad_norm=1e9,
                      anneal_lr=False).resolved()  # the SGD step below keeps its readable 0.1
    torch.manual_seed(0)
    current, behaviour = small_model(), small_model()
    learner = Learner(cfg.learner_settings(), copy.deepcopy(current), copy.deepcopy(behaviour), DIST)
    learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.1)  # so the step is readable
    storage = _storage(1)

    # The gradient the paper's eq. 6 asks for: at the behaviour parameters, on the behaviour data.
    reference = Learner(cfg.learner_settings(), copy.deepcopy(behaviour), copy.deepcopy(behaviour), DIST)
    batch = reference._batch(storage)
    logits, value = reference.model(batch.obs)
    dist = torch.distributions.Categorical(logits=logits)
    loss, _ = a2c_loss(dist.log_prob(batch.actions), batch.advantages, value, batch.returns,
                       dist.entropy(), cfg.vf_coef, cfg.ent_coef)
    grads = torch.autograd.grad(loss, list(reference.model.parameters()))

    learner.update(storage)
    for before, after, grad in zip(current.parameters(), learner.model.parameters(), grads):
        torch.testing.assert_close(after.detach(), before.detach() - 0.1 * grad)
    # ...and it is not the gradient at the current parameters.
    cur_grads = torch.autograd.grad(
        a2c_loss(*_a2c_terms(current, batch), cfg.vf_coef, cfg.ent_coef)[0], list(current.parameters()))
    assert any(not torch.allclose(g, c) for g, c in zip(grads, cur_grads))


def _a2c_terms(model, batch):
    logits, value = model(batch.obs)
    dist = torch.distributions.Categorical(logits=logits)
    return dist.log_prob(batch.actions), batch.advantages, value, batch.returns, dist.entropy()


def test_bootstrap_values_come_from_the_behaviour_parameters():
    cfg = TrainConfig(num_envs=3, rollout=5, total_steps=15, minibatches=1).resolved()
    torch.manual_seed(0)
    current, behaviour = small_model(), small_model()
    storage = _storage(2)
    storage.truncated[3, 0] = True
    storage.bootstrap_values[3, 0] = 7.5  # the final observation's value, recorded at collection
    batch = Learner(cfg.learner_settings(), current, behaviour, DIST)._batch(storage)
    with torch.no_grad():
        v_boot = behaviour.value({"obs": torch.from_numpy(storage.obs["obs"][-1])})
    adv = batch.advantages.view(5, 3)
    ret = batch.returns.view(5, 3)
    # Last step of env 2 (no episode end): return = r + gamma * V_behaviour(obs[T]).
    assert ret[4, 2].item() == pytest.approx(storage.rewards[4, 2] + 0.99 * v_boot[2].item(), abs=1e-6)
    # Truncated step bootstraps from the final observation's recorded value; the trace is cut there.
    assert adv[3, 0].item() == pytest.approx(
        storage.rewards[3, 0] + 0.99 * 7.5 - storage.values[3, 0], rel=1e-5)



def _lagged_ppo_step(trust_region: str, lag: int,
                     vf_coef: float = 0.0) -> tuple[ActorCritic, Learner, RolloutBatch]:
    """One SGD step of PPO on behaviour data by a learner `lag` updates ahead of the behaviour; returns
    the starting parameters, the learner after the step, and the batch it learned."""
    cfg = TrainConfig(num_envs=3, rollout=5, total_steps=15, minibatches=1, epochs=1, clip_coef=0.05,
                      vf_coef=vf_coef, ent_coef=0.0, norm_adv=False, max_grad_norm=1e9, anneal_lr=False,
                      ppo_trust_region=trust_region).resolved()
    torch.manual_seed(0)
    current, behaviour = small_model(), small_model()
    storage = _storage(3)
    with torch.no_grad():  # a behaviour policy visibly older, and the log-probs it stored when it acted
        for param in behaviour.parameters():
            param.add_(0.3 * torch.randn_like(param))
        logits = behaviour({"obs": torch.from_numpy(storage.obs["obs"][:-1].reshape(15, 4))})[0]
        storage.logprobs[:] = torch.distributions.Categorical(logits=logits).log_prob(
            torch.from_numpy(storage.actions.reshape(15))).numpy().reshape(5, 3)
    learner = Learner(cfg.learner_settings(), copy.deepcopy(current), copy.deepcopy(behaviour), DIST)
    learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.1)
    learner.version, learner.behaviour_version = lag, 0
    batch = learner._batch(storage)
    learner.update(storage)
    return current, learner, batch


def _sgd_step(model: ActorCritic, batch: RolloutBatch, old_logprobs: torch.Tensor,
              advantages: torch.Tensor, old_values: torch.Tensor | None = None,
              vf_coef: float = 0.0) -> list[torch.Tensor]:
    """The parameters after one SGD step (lr 0.1) on the PPO surrogate (and the clipped value loss)."""
    params = list(model.parameters())
    logits, value = model(batch.obs)
    dist = torch.distributions.Categorical(logits=logits)
    old_values = batch.values if old_values is None else old_values
    loss, _ = ppo_loss(dist.log_prob(batch.actions), old_logprobs, advantages, value, old_values,
                       batch.returns, dist.entropy(), 0.05, True, vf_coef, 0.0)
    return [p.detach() - 0.1 * g for p, g in zip(params, torch.autograd.grad(loss, params))]


def test_hts_ppo_clips_around_the_policy_its_trust_region_names():
    """One update of lag: 'behaviour' takes the PPO ratio against the policy that acted (the released
    HTS-RL code); 'current' centres it on the update's starting parameters and weights each sample by
    pi_current / pi_behaviour (decoupled PPO)."""
    current, learner, batch = _lagged_ppo_step("behaviour", lag=1)
    with torch.no_grad():
        start = torch.distributions.Categorical(logits=current(batch.obs)[0]).log_prob(batch.actions)
    assert (((start - batch.logprobs).exp() - 1).abs() > 0.05).any()  # the lag alone exceeds the clip
    against_behaviour = _sgd_step(current, batch, batch.logprobs, batch.advantages)
    for after, want in zip(learner.model.parameters(), against_behaviour):
        torch.testing.assert_close(after.detach(), want)

    current, learner, batch = _lagged_ppo_step("current", lag=1)
    weights = (start - batch.logprobs).exp()
    around_current = _sgd_step(current, batch, start, batch.advantages * weights)
    for after, want in zip(learner.model.parameters(), around_current):
        torch.testing.assert_close(after.detach(), want)
    assert any(not torch.allclose(a, b) for a, b in zip(against_behaviour, around_current))


def test_without_lag_both_trust_regions_are_the_same_update():
    """Sync mode (behaviour = current parameters): 'current' changes nothing, bit for bit."""
    behaviour_run = _lagged_ppo_step("behaviour", lag=0)[1].model.state_dict()
    current_run = _lagged_ppo_step("current", lag=0)[1].model.state_dict()
    assert all(torch.equal(behaviour_run[k], current_run[k]) for k in behaviour_run)


def test_hts_ppo_clips_the_value_around_the_critic_the_update_starts_from():
    """With lag, the value clip is centred on the current critic's values, not the behaviour critic's:
    otherwise the critic stops learning wherever the previous update moved it past the clip range."""
    current, learner, batch = _lagged_ppo_step("current", lag=1, vf_coef=1.0)
    recorded = torch.from_numpy(_storage(3).values).flatten()
    with torch.no_grad():
        logits, start_values = current(batch.obs)
        start = torch.distributions.Categorical(logits=logits).log_prob(batch.actions)
    assert ((start_values - recorded).abs() > 0.05).any()  # the recorded values lie outside the clip
    weights = (start - batch.logprobs).exp()
    around_current = _sgd_step(current, batch, start, batch.advantages * weights, start_values, 1.0)
    for after, want in zip(learner.model.parameters(), around_current):
        torch.testing.assert_close(after.detach(), want)
    around_behaviour = _sgd_step(current, batch, start, batch.advantages * weights, recorded, 1.0)
    assert any(not torch.allclose(a, b) for a, b in zip(around_current, around_behaviour))


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_hts_ppo_takes_advantages_from_the_critic_the_update_starts_from(algo: str):
    """One update of lag, decoupled PPO: GAE runs on the current critic's values (it has learned the
    previous rollout; the behaviour critic has not), bootstrap included. A2C's delayed gradient is
    taken at the behaviour parameters, so its advantages keep the behaviour critic's values, as do
    sync runs and --ppo-trust-region behaviour (covered by the tests above)."""
    cfg = TrainConfig(algo=algo, num_envs=3, rollout=5, total_steps=15, minibatches=1,
                      gae_lambda=0.9).resolved()
    torch.manual_seed(0)
    current, behaviour = small_model(), small_model()
    storage = _storage(4)
    learner = Learner(cfg.learner_settings(), current, behaviour, DIST)
    learner.version, learner.behaviour_version = 1, 0
    batch = learner._batch(storage)
    obs = {"obs": torch.from_numpy(storage.obs["obs"])}
    critic = current if algo == "ppo" else behaviour
    with torch.no_grad():
        values = critic.value({"obs": obs["obs"].flatten(0, 1)}).view(6, 3)
    if algo == "a2c":
        values[:-1] = torch.from_numpy(storage.values)  # recorded at collection by the behaviour critic
    terminated = torch.from_numpy(storage.terminated)
    want, _ = gae(torch.from_numpy(storage.rewards), values[:-1], values[1:], terminated, terminated,
                  cfg.gamma, cfg.gae_lambda)
    torch.testing.assert_close(batch.advantages, want.flatten())
    torch.testing.assert_close(batch.values, values[:-1].flatten())
    assert (batch.proximal_logprobs is not None) == (algo == "ppo")
