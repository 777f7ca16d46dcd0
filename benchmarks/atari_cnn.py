"""Nature CNN speed: fp32 vs bf16 autocast, NCHW vs channels-last, torch.compile (`--torch-compile`'s
compiled encoders), learner and inference shapes.

Learner: forward+backward+Adam step on a minibatch of --batch uint8 (4, 84, 84) observations.
Inference: forward of one --block-row block (the fixed shape deterministic inference uses).
Deterministic algorithms on, as in a run. Prints one table and writes a PNG.

    python benchmarks/atari_cnn.py --threads 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from plotting import pyplot, save

from htsrl_aio import TrainConfig
from htsrl_aio.envs import EnvSpec
from htsrl_aio.models import build_model
from htsrl_aio.models.compiled import compile_encoders

PONG = EnvSpec.from_spaces(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6))


def measure(precision: str, channels_last: bool, batch: int, block: int, repeats: int,
            compiled: bool = False) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(PONG, TrainConfig(precision=precision).resolved())
    if compiled:
        compile_encoders(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    obs = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8).contiguous(memory_format=fmt)

    def learn() -> None:
        logits, value = model({"obs": obs})
        (logits.logsumexp(-1).mean() + value.square().mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    learn()  # warm-up: kernel selection (and compilation)
    start = time.perf_counter()
    for _ in range(repeats):
        learn()
    learner = batch * repeats / (time.perf_counter() - start)
    rows = obs[:block].clone().contiguous(memory_format=fmt)
    with torch.no_grad():
        model({"obs": rows})  # warm-up (and compilation of the no-grad graph)
        start = time.perf_counter()
        for _ in range(repeats * 10):
            model({"obs": rows})
        inference = block * repeats * 10 / (time.perf_counter() - start)
    return learner, inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=256, help="learner minibatch (atari-ppo: 256)")
    parser.add_argument("--block", type=int, default=8, help="inference block rows (--inference-block)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/atari_cnn.png"))
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    results = {}
    print(f"Nature CNN, learner batch {args.batch}, inference block {args.block}; samples/s")
    print(f"{'threads':>7}  {'variant':<20}{'learner':>10}{'inference':>11}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                label = precision + (" channels-last" if channels_last else "")
                learner, inference = measure(precision, channels_last, args.batch, args.block, args.repeats)
                results[(threads, label)] = (learner, inference)
                print(f"{threads:>7}  {label:<20}{learner:>10.0f}{inference:>11.0f}", flush=True)
        learner, inference = measure("bf16", False, args.batch, args.block, args.repeats, compiled=True)
        results[(threads, "bf16 compiled")] = (learner, inference)
        print(f"{threads:>7}  {'bf16 compiled':<20}{learner:>10.0f}{inference:>11.0f}", flush=True)

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{t}t {v}" for t, v in results]
    ax.barh(range(len(results)), [r[0] for r in results.values()], color="tab:blue")
    ax.set_yticks(range(len(results)), labels, fontsize=7)
    ax.set_xlabel(f"learner samples/s (forward+backward, batch {args.batch})")
    save(fig, args.plot)


if __name__ == "__main__":
    main()
