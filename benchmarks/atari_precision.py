"""Does bf16 autocast change what PPO learns on Atari? One update, fp32 vs bf16, against SGD's own noise.

A short `atari-ppo` run writes swap checkpoints (parameters, optimizer, and the real rollout about to be
learned). From each checkpoint the real Learner learns that rollout (4 epochs x 4 minibatches) in
several ways, all from the same parameters and optimizer state:

- fp32, the reference;
- bf16 (`--precision bf16`, the presets' setting), same minibatch order;
- fp32 with `--orders` other minibatch orders (other seeds): differences every run already has.

Policies are compared on the rollout's observations, always evaluated in fp32, by mean KL divergence:
"update" = KL(before || after fp32), how far one update moves the policy; "bf16" = KL(after fp32 ||
after bf16); "order" = KL(after fp32 || after fp32 with another minibatch order). bf16 keeps the
learning curve if its deviation is small against the update and no larger than the order noise.

    python benchmarks/atari_precision.py --updates 30 --checkpoint-every 10
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

from htsrl_aio import TrainConfig, train
from htsrl_aio.checkpoint import load, periodic_checkpoints
from htsrl_aio.distributions import make_distribution
from htsrl_aio.envs import EnvSpec
from htsrl_aio.models import ActorCritic, build_model
from htsrl_aio.runtime.learner import Learner, learn
from htsrl_aio.runtime.storage import RolloutStorage


def atari_spec(obs: torch.Tensor, state_dict: dict) -> EnvSpec:
    """The spaces of the checkpoint's game: uint8 frames and as many actions as the policy head has."""
    num_actions = state_dict["actor.0.weight"].shape[0]
    return EnvSpec.from_spaces(gym.spaces.Box(0, 255, tuple(obs.shape[1:]), np.uint8),
                               gym.spaces.Discrete(num_actions))


def learn_once(state: dict, cfg: TrainConfig, storage: RolloutStorage, spec: EnvSpec) -> ActorCritic:
    """The parameters after the checkpoint's next update, learned under `cfg`."""
    model = build_model(spec, cfg)
    learner = Learner(cfg.learner_settings(), model, build_model(spec, cfg), make_distribution(spec.action))
    learner.restore(state)
    # The version that collected the checkpoint's rollout (checkpoint format v2 kept it with the learner).
    learn(learner, storage, state["schedule"].get("behaviour_version", state["behaviour_version"]))
    return model


@torch.no_grad()
def log_policy(state_dict: dict, obs: torch.Tensor, spec: EnvSpec, cfg: TrainConfig) -> torch.Tensor:
    model = build_model(spec, dataclasses.replace(cfg, precision="fp32"))
    model.load_state_dict(state_dict)
    return F.log_softmax(model({"obs": obs})[0], dim=-1)


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def compare(path: Path, orders: int) -> dict[str, float]:
    state = load(path)
    cfg = TrainConfig.from_json_dict(state["config"], str(path)).resolved()
    arrays = {name: tensor.numpy() for name, tensor in state["rollout"].items()}
    storage = RolloutStorage(0, arrays)
    frames = storage.obs["obs"]
    obs = torch.from_numpy(frames[:-1].reshape(-1, *frames.shape[2:]))
    spec = atari_spec(obs, state["model"])

    def after(**changes: object) -> torch.Tensor:
        learned = learn_once(state, dataclasses.replace(cfg, **changes), storage, spec)
        return log_policy(learned.state_dict(), obs, spec, cfg)

    before, fp32 = log_policy(state["model"], obs, spec, cfg), after(precision="fp32")
    bf16 = after(precision="bf16")
    order_noise = [kl(fp32, after(precision="fp32", seed=cfg.seed + 1 + k)) for k in range(orders)]
    return {"update": state["update"], "observations": len(obs), "kl_update": kl(before, fp32),
            "kl_bf16": kl(fp32, bf16), "kl_order": statistics.mean(order_noise)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--updates", type=int, default=30, help="updates of the short run")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--orders", type=int, default=2, help="other minibatch orders per checkpoint")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.torch_threads)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        preset = TrainConfig(env=args.env, preset="atari-ppo").resolved()
        train(TrainConfig(env=args.env, preset="atari-ppo", workers=args.workers, logdir=f"{tmp}/run",
                          total_steps=args.updates * preset.num_envs * preset.rollout, progress=False,
                          checkpoint_every=args.checkpoint_every, keep_checkpoints=args.updates,
                          tensorboard=False))
        rows = [compare(path, args.orders) for path in periodic_checkpoints(Path(tmp) / "run")]

    print(f"{args.env}, atari-ppo, one update from each checkpoint; mean KL on the rollout's "
          f"{rows[0]['observations']} observations (policies evaluated in fp32)")
    print(f"{'update':>7}{'KL update':>12}{'KL bf16':>12}{'KL order':>12}{'bf16/update':>13}"
          f"{'bf16/order':>12}")
    for r in rows:
        print(f"{r['update']:>7}{r['kl_update']:>12.2e}{r['kl_bf16']:>12.2e}{r['kl_order']:>12.2e}"
              f"{r['kl_bf16'] / r['kl_update']:>13.3f}{r['kl_bf16'] / r['kl_order']:>12.2f}")
    ratios = [r["kl_bf16"] / r["kl_order"] for r in rows]
    print(f"bf16 deviation / minibatch-order deviation: median {np.median(ratios):.2f} "
          f"(<= 1: bf16 changes the update less than reshuffling the minibatches does)")


if __name__ == "__main__":
    main()
