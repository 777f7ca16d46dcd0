"""Train PPO on MuJoCo HalfCheetah with HTS-RL, then evaluate the deterministic policy.

    pip install -e ".[mujoco]"
    python examples/mujoco_halfcheetah.py                       # 1M steps, the usual MuJoCo budget
    python examples/mujoco_halfcheetah.py --total-steps 200000  # a quick look

The same run from the command line:

    htsrl-aio train --env HalfCheetah-v5 --preset mujoco-ppo --total-steps 1000000
    htsrl-aio eval RUN_DIR --episodes 10 --deterministic

What happens: HalfCheetah's 6 joint torques are a `Box` action space, so the policy is a diagonal
Gaussian (a state-independent log-std); each action is drawn from its step ticket's own normals, the
unclipped sample is learned from, and the env gets it clipped to [-1, 1]. The `mujoco-ppo` preset is
CleanRL's continuous-action PPO (batch 2048 = 8 envs x 256 steps, 10 epochs of 32 minibatches, Adam
3e-4 decayed linearly, clip 0.2) with running normalisation of observations and rewards, kept as
model buffers so they are saved, published and evaluated with the parameters.
"""

import argparse
import asyncio

from htsrl_aio import TrainConfig, train
from htsrl_aio.evaluate import evaluate, format_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5", help="any Box-action id, e.g. Hopper-v5")
    parser.add_argument("--total-steps", type=int, default=1_000_000)
    parser.add_argument("--mode", default="hts", choices=["hts", "sync"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    summary = train(TrainConfig(env=args.env, preset="mujoco-ppo", mode=args.mode,
                                total_steps=args.total_steps, seed=args.seed))
    print(f"{summary['global_step']} steps in {summary['wall_time_s']:.0f} s ({summary['sps']:.0f} steps/s); "
          f"mean return of the last 100 episodes: {summary['episode_return_mean']:.1f}")
    result = asyncio.run(evaluate(summary["logdir"], episodes=10, deterministic=True))
    print(format_result(result))


if __name__ == "__main__":  # env workers are spawned processes: keep the entry point guarded
    main()
