"""Train PPO on CartPole served over TCP: start the simulator, connect 16 AsyncEnvs to it, train.

    python examples/remote_env/train_remote.py --total-steps 100000 --latency-ms 2

The envs are AsyncEnvs, so they run as coroutines on the training loop: no worker processes, and
16 connections waiting on the network cost nothing. The server's random latency never changes the
result: run it twice and compare `final_params_sha256`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client import RemoteCartPole

from htsrl_aio import TrainConfig, Trainer
from htsrl_aio.training import run_event_loop


async def start_server(latency_ms: float) -> tuple[asyncio.subprocess.Process, int]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).parent / "server.py"), "--port", "0",
        "--latency-ms", str(latency_ms), stdout=asyncio.subprocess.PIPE)
    assert server.stdout is not None
    line = (await asyncio.wait_for(server.stdout.readline(), timeout=30)).decode()
    if not line.startswith("listening on "):
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return server, int(line.rsplit(":", 1)[1])


async def main(args: argparse.Namespace) -> dict:
    server, port = await start_server(args.latency_ms)
    try:
        config = TrainConfig(env=functools.partial(RemoteCartPole, "127.0.0.1", port), num_envs=args.num_envs,
                             total_steps=args.total_steps, seed=args.seed, logdir=args.logdir,
                             progress=args.progress)
        async with Trainer(config) as trainer:
            summary = await trainer.run()
    finally:
        server.terminate()
        await server.wait()
    print(f"{summary['global_step']} steps at {summary['sps']:.0f} steps/s, mean return "
          f"{summary['episode_return_mean']}, final_params_sha256 {summary['final_params_sha256'][:16]}...")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--logdir", default=None)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    run_event_loop(main(parser.parse_args()))
