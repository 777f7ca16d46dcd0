"""A user's training script, as run under Slurm or Kubernetes: `htsrl_aio.train()` and nothing else.

    python training_script.py RUN_DIR [handled|unhandled]
"""

import sys

from htsrl_aio import TrainConfig, train

# Jittered steps (0-2 ms) keep the run going long enough for a signal to land in the middle of it. The
# next swap comes whatever the load: --stop-timeout only guards against one that never does.
SETTINGS = {"env": "envs_for_tests:jitter_cartpole", "num_envs": 4, "rollout": 16, "total_steps": 4 * 16 * 40,
            "workers": 1, "progress": False, "checkpoint_every": 0, "stop_timeout": 600}

if __name__ == "__main__":  # env workers are spawned processes: keep the entry point guarded
    run_dir, signals = sys.argv[1], sys.argv[2]
    train(TrainConfig(**SETTINGS, logdir=run_dir), handle_signals=signals == "handled")
