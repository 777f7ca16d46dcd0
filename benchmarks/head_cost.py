"""The head's own cost per env step: CPU time of the main process (event loop, scheduler, batched
inference, storage bookkeeping) per env step, with an env that costs nothing (a constant observation,
no dynamics), from 8 to 1,024 envs.

    python benchmarks/head_cost.py --envs 8 32 128 512 1024
    python benchmarks/head_cost.py --envs 8 --agents 3   # a zero-cost ParallelEnv: 3 rows per env step

Each point trains twice in this process, about `--steps` and 2 x `--steps` env steps (whole
rollouts), and divides the difference of the main process's CPU time (`time.process_time`: its
threads, not the env workers or the learner process) by the difference of env steps, so start-up and
shut-down cancel out. The env runs in
one worker process and the learner in its own, so neither is counted; the learner's updates are tiny
(one epoch, 64x64 MLP) to keep the swap from waiting on it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from htsrl_aio import TrainConfig, train


class ZeroCostEnv(gym.Env):
    """Observations only: the same 4 floats every step, reward 0, episodes of 1,000 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self._obs = np.zeros(4, np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        self._t = 0
        return self._obs, {}

    def step(self, action):
        self._t += 1
        return self._obs, 0.0, False, self._t >= 1000, {}


def zero_cost_env() -> gym.Env:
    return ZeroCostEnv()


class ZeroCostParallelEnv:
    """A PettingZoo ParallelEnv of `agents` agents that costs nothing: MPE simple_spread's spaces (18
    floats, 5 actions per agent), the same observation every step, reward 0, episodes of 25 steps."""

    def __init__(self, agents: int) -> None:
        self.metadata: dict = {}
        self.possible_agents = [f"agent_{i}" for i in range(agents)]
        self.agents: list[str] = []
        self._obs = np.zeros(18, np.float32)
        self._t = 0

    def observation_space(self, agent: str) -> gym.spaces.Box:
        return gym.spaces.Box(-1.0, 1.0, (18,), np.float32)

    def action_space(self, agent: str) -> gym.spaces.Discrete:
        return gym.spaces.Discrete(5)

    def reset(self, seed=None, options=None):
        self._t = 0
        self.agents = list(self.possible_agents)
        return dict.fromkeys(self.agents, self._obs), {agent: {} for agent in self.agents}

    def step(self, actions):
        self._t += 1
        end = self._t >= 25
        out = (dict.fromkeys(self.agents, self._obs), dict.fromkeys(self.agents, 0.0),
               dict.fromkeys(self.agents, False), dict.fromkeys(self.agents, end),
               {agent: {} for agent in self.agents})
        if end:
            self.agents = []
        return out

    def close(self) -> None:
        pass


def zero_cost_agents(agents: int = 3) -> ZeroCostParallelEnv:
    return ZeroCostParallelEnv(agents)


def head_seconds(envs: int, updates: int, rollout: int, block: int | None, agents: int,
                 root: Path) -> tuple[float, int]:
    """(main-process CPU seconds, env steps) of one run of `updates` rollouts."""
    env = {"env": "head_cost:zero_cost_env"} if agents == 1 else \
        {"env": "head_cost:zero_cost_agents", "env_kwargs": {"agents": agents}}
    cfg = TrainConfig(**env, num_envs=envs, rollout=rollout,
                      total_steps=envs * rollout * updates, workers=1, epochs=1, minibatches=1,
                      hidden=(64, 64), inference_block=block, logdir=str(root / f"{envs}-{block}-{updates}"),
                      progress=False)
    start = time.process_time()
    train(cfg)
    return time.process_time() - start, envs * rollout * updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[8, 32, 128, 512, 1024])
    parser.add_argument("--steps", type=int, default=65536, help="env steps of the shorter run")
    parser.add_argument("--rollout", type=int, default=32)
    parser.add_argument("--inference-block", type=int, nargs="+",
                        help="rows per inference pass (default: the run's own, which follows the envs); "
                             "several give one column each")
    parser.add_argument("--agents", type=int, default=1,
                        help="agents per env: above 1, a zero-cost PettingZoo ParallelEnv with MPE "
                             "simple_spread's spaces (each agent one row of the head's work)")
    args = parser.parse_args()
    blocks = args.inference_block or [None]
    print("| envs | " + " | ".join(f"head core-µs per env step, block {b or 'by default'}" for b in blocks)
          + " | env steps measured |")
    print("| ---: |" + " ---: |" * (len(blocks) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for envs in args.envs:
            updates = max(2, args.steps // (envs * args.rollout))
            cells = []
            for block in blocks:  # side by side, so each row's blocks ran under the same conditions
                point = (args.rollout, block, args.agents, Path(tmp))
                short, short_steps = head_seconds(envs, updates, *point)
                long, long_steps = head_seconds(envs, 2 * updates, *point)
                steps = long_steps - short_steps
                cells.append(f"{(long - short) / steps * 1e6:.1f}")
            print(f"| {envs} | {' | '.join(cells)} | {steps} |", flush=True)


if __name__ == "__main__":  # env workers are spawned processes: keep the entry point guarded
    main()
