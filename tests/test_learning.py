"""CartPole learns, in both modes, with both algorithms (tens of seconds each on 2 cores)."""

import pytest

from htsrl_aio import TrainConfig, train

RANDOM_POLICY_RETURN = 22  # CartPole-v1's mean episode return under uniform random actions


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_cartpole_learns(tmp_path, no_leaks, algo, mode):
    summary = train(TrainConfig(env="CartPole-v1", algo=algo, mode=mode, num_envs=8, total_steps=60_000,
                                seed=1, logdir=str(tmp_path / "run"), progress=False))
    # Several times better than chance within 60k steps; the README's 300k-step run reaches 500.
    assert summary["episode_return_mean"] >= 6 * RANDOM_POLICY_RETURN, summary
