"""The schedule itself, with an in-process env pool whose replies come late and out of order."""

import itertools

import numpy as np
import pytest
import torch
from fake_pool import EPISODE_LEN
from harness import make_harness

from htsrl_aio.steps import StepTicket


@pytest.mark.parametrize("mode", ["hts", "sync"])
async def test_tickets_place_every_transition_by_env_and_step(mode):
    h = make_harness(mode=mode)
    await h.scheduler.run()
    cfg = h.scheduler.cfg
    assert [seen["rollout"] for seen in h.learner.seen] == list(range(cfg.num_rollouts))
    for seen in h.learner.seen:
        j = seen["rollout"]
        for t in range(cfg.rollout + 1):
            for env in range(cfg.num_envs):
                env_step = j * cfg.rollout + t
                expected = [env, env_step % EPISODE_LEN, env_step, 0]
                np.testing.assert_array_equal(seen["obs"][t, env], expected)
        for t in range(cfg.rollout):
            for env in range(cfg.num_envs):
                env_step = j * cfg.rollout + t
                # The action stored at (t, env) is the one that env received at that step.
                assert seen["actions"][t, env] == h.pool.actions[(env, env_step)]
                ends = (env_step + 1) % EPISODE_LEN == 0
                assert seen["terminated"][t, env] or seen["truncated"][t, env] or not ends
                assert (seen["terminated"][t, env] or seen["truncated"][t, env]) == ends


async def test_rollouts_are_consecutive_and_truncations_bootstrap_from_their_final_obs():
    h = make_harness()
    await h.scheduler.run()
    seen = h.learner.seen
    for prev, nxt in itertools.pairwise(seen):
        np.testing.assert_array_equal(prev["obs"][-1], nxt["obs"][0])
    truncations = 0
    for rollout in seen:
        h.inference.model.load_state_dict(rollout["behaviour_params"])  # the parameters that collected it
        for t, env in zip(*np.nonzero(rollout["truncated"])):
            # The value of the episode's 7th observation, not of the reset observation stored next.
            final = np.array([env, EPISODE_LEN, rollout["obs"][t + 1, env][2], 0], np.float32)
            assert rollout["obs"][t + 1, env][1] == 0
            expected = h.inference.infer([None], [{"obs": final}])[0].value
            assert rollout["bootstrap_values"][t, env] == pytest.approx(expected, rel=1e-6)
            truncations += 1
        assert (rollout["bootstrap_values"][~rollout["truncated"]] == 0).all()
    assert truncations > 0


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
async def test_hts_lag_is_exactly_one_update_under_random_delays(algo):
    h = make_harness(algo=algo, total_steps=4 * 5 * 10)
    await h.scheduler.run()
    assert [m["policy_lag"] for m in h.metrics] == [0] + [1] * 9
    for u, seen in enumerate(h.learner.seen):
        assert seen["version"] == u
        assert seen["behaviour_version"] == max(0, u - 1)


async def test_sync_mode_has_no_lag():
    h = make_harness(mode="sync", total_steps=4 * 5 * 6)
    await h.scheduler.run()
    assert [m["policy_lag"] for m in h.metrics] == [0] * 6


async def test_hts_collects_each_rollout_with_the_parameters_published_at_the_last_swap():
    h = make_harness(total_steps=4 * 5 * 5)
    snapshots = []
    learner_update = h.learner.update

    def update_and_snapshot(storage):
        stats = learner_update(storage)
        snapshots.append({k: v.clone() for k, v in h.learner.model.state_dict().items()})
        return stats

    h.learner.update = update_and_snapshot
    await h.scheduler.run()
    # Rollout u+1 (learned at update u+1) was collected with theta_u, the output of update u-1.
    for u in range(2, len(h.learner.seen)):
        behaviour = h.learner.seen[u]["behaviour_params"]
        for name, tensor in snapshots[u - 2].items():
            assert torch.equal(behaviour[name], tensor)


async def test_actions_come_from_each_tickets_own_stream():
    h = make_harness()
    await h.scheduler.run()
    seen = h.learner.seen[0]
    h.inference.model.load_state_dict(seen["behaviour_params"])  # the parameters rollout 0 used
    # Recompute rollout 0's actions one ticket at a time, each alone in its batch: they must agree.
    for t in range(h.scheduler.cfg.rollout):
        for env in range(h.scheduler.cfg.num_envs):
            result = h.inference.infer([StepTicket(0, env, t)], [{"obs": seen["obs"][t, env]}])
            assert result[0].action == seen["actions"][t, env]
