"""Train PPO (the paper's GFootball hyperparameters) on a Google Research Football academy scenario.

    scripts/install-football.sh          # once: builds gfootball 2.10.2 (about 7 minutes)
    python examples/football.py          # academy_empty_goal_close, hts mode
    python examples/football.py --scenario academy_run_to_score --mode sync --steps 500000

The score of a `scoring` run is its mean episode return: the goals scored per episode, at most 1 in
the academy scenarios.
"""

import argparse

from htsrl_aio import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="academy_empty_goal_close")
    parser.add_argument("--representation", choices=["simple115v2", "extracted"], default="simple115v2")
    parser.add_argument("--mode", choices=["hts", "sync"], default="hts")
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    summary = train(TrainConfig(env=f"gfootball/{args.scenario}", preset="football-ppo", mode=args.mode,
                                football_representation=args.representation,  # extracted: the SMM CNN
                                total_steps=args.steps, seed=args.seed))
    score = summary["episode_return_mean"]
    print(f"{args.mode}: score {score:.2f} after {summary['global_step']} steps "
          f"in {summary['wall_time_s'] / 60:.1f} min ({summary['sps']:.0f} steps/s); "
          f"run in {summary['logdir']}")


if __name__ == "__main__":  # env workers are spawned processes: keep the entry point guarded
    main()
