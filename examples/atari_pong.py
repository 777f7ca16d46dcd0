"""Train PPO on Atari Pong with HTS-RL: the whole recipe a researcher needs, in one screen.

    python examples/atari_pong.py                      # 10M frames, the usual Pong budget
    python examples/atari_pong.py --total-steps 500000  # 2M frames: the learning check's budget

The same run from the command line:

    htsrl-aio train --env ALE/Pong-v5 --preset atari-ppo --total-steps 2500000

What happens: `ALE/Pong-v5` is stepped by ale-py's C++ AtariVectorEnv inside the env worker processes
(4-frame skip with max-pooling, 84x84 grayscale, 4 stacked frames, up to 30 no-ops, sticky actions
0.25). The agent trains on clipped rewards; `episode_return_mean` is the game score (-21..21).
The `atari-ppo` preset is CleanRL's PPO: 8 envs x 128 steps, 4 epochs of 4 minibatches, Adam 2.5e-4
decayed linearly, clip 0.1, entropy 0.01, and the Nature CNN under bf16 autocast.
At 2M frames Pong is usually not won yet (docs/benchmarks.md, learning check): budget 10M.
"""

import argparse

from htsrl_aio import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ALE/Pong-v5", help="any ALE id, e.g. ALE/Breakout-v5")
    parser.add_argument("--total-steps", type=int, default=2_500_000, help="env steps; frames are 4x this")
    parser.add_argument("--mode", default="hts", choices=["hts", "sync"])
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    config = TrainConfig(
        env=args.env,
        preset="atari-ppo",       # every hyperparameter above; any field given here overrides it
        mode=args.mode,
        total_steps=args.total_steps,
        device=args.device,       # "auto": the GPU when torch sees one
        seed=args.seed,           # same seed, same bits: final_params_sha256 repeats exactly
        atari_episodic_life=False,  # True: a lost life ends the training episode (not the logged game)
    )
    summary = train(config)
    print(f"{summary['global_step']} steps ({4 * summary['global_step']} frames) in "
          f"{summary['wall_time_s']:.0f} s ({summary['sps']:.0f} steps/s); mean game score of the last "
          f"100 games: {summary['episode_return_mean']}; run directory: {summary['logdir']}")


if __name__ == "__main__":  # env workers are spawned processes: keep the entry point guarded
    main()
