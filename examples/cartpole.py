"""Train PPO on CartPole-v1 with HTS-RL, then the same in sync mode, and compare.

    python examples/cartpole.py
"""

from htsrl_aio import TrainConfig, train


def main() -> None:
    results = {}
    for mode in ("hts", "sync"):
        config = TrainConfig(
            env="CartPole-v1",
            algo="ppo",
            mode=mode,
            num_envs=8,
            rollout=64,  # the sync interval alpha: envs meet once per 64 steps in hts mode
            total_steps=300_000,
            seed=1,
            logdir=None,  # a fresh runs/CartPole-v1-ppo-<mode>-s1-<time>
        )
        results[mode] = train(config)
    for mode, summary in results.items():
        print(f"{mode:>4}: {summary['sps']:.0f} steps/s, mean return {summary['episode_return_mean']:.1f}, "
              f"run in {summary['logdir']}")


if __name__ == "__main__":  # env workers are spawned processes: keep the entry point guarded
    main()
