"""Pistonball (PettingZoo butterfly): 20 pistons, one shared CNN policy, as PettingZoo's SB3 tutorial
prepares it with SuperSuit: the blue channel, 84x84, 3 stacked frames, discrete moves.

    pip install -e ".[multiagent]"
    htsrl-aio train --env examples.pistonball:parallel_env --num-envs 4 --rollout 64 --total-steps 200000
    python examples/pistonball.py          # the same from Python

Run from the repository root (the module is found as `examples.pistonball`). Each env step is 20
agent transitions (20 rows of the storage), so `--num-envs 4` already trains on 80 rows.
"""

from typing import Any

import supersuit as ss
from pettingzoo.butterfly import pistonball_v6

from htsrl_aio import TrainConfig, train


def parallel_env(**kwargs: Any) -> Any:
    """The factory `--env` names: SuperSuit's wrappers around PettingZoo's own env (`kwargs` are
    pistonball_v6's, e.g. render_mode for `htsrl-aio eval --video`)."""
    env = pistonball_v6.parallel_env(**{"continuous": False, "max_cycles": 125, **kwargs})
    env = ss.color_reduction_v0(env, mode="B")
    env = ss.resize_v1(env, x_size=84, y_size=84)
    return ss.frame_stack_v1(env, 3)


def main() -> None:
    summary = train(TrainConfig(env="examples.pistonball:parallel_env", num_envs=4, rollout=64,
                                total_steps=200_000, seed=1))
    print(f"{summary['sps']:.0f} env steps/s, mean agent return {summary['episode_return_mean']:.2f}, "
          f"run in {summary['logdir']}")


if __name__ == "__main__":  # env workers are spawned processes: keep the entry point guarded
    main()
