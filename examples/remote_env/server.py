"""A CartPole simulator served over TCP with asyncio streams, with real per-step latency.

One connection = one env. The protocol is one JSON object per line:
    {"cmd": "reset", "seed": 3}   ->  {"obs": [...]}
    {"cmd": "step", "action": 1}  ->  {"obs": [...], "reward": 1.0, "terminated": false, "truncated": false}

    python examples/remote_env/server.py --port 8765 --latency-ms 2
It prints "listening on HOST:PORT" once it accepts connections (--port 0 picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random

import gymnasium as gym


async def serve_env(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency_s: float) -> None:
    env = gym.make("CartPole-v1")
    noise = random.Random()  # the simulator's timing is its own business: it must not change results
    try:
        while line := await reader.readline():
            request = json.loads(line)
            if request["cmd"] == "reset":
                obs, _ = env.reset(seed=request["seed"])
                reply = {"obs": obs.tolist()}
            else:
                await asyncio.sleep(noise.expovariate(1.0 / latency_s) if latency_s > 0 else 0)
                obs, reward, terminated, truncated, _ = env.step(request["action"])
                reply = {"obs": obs.tolist(), "reward": float(reward), "terminated": bool(terminated),
                         "truncated": bool(truncated)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away
    finally:
        env.close()
        writer.close()


async def main(host: str, port: int, latency_s: float) -> None:
    server = await asyncio.start_server(lambda r, w: serve_env(r, w, latency_s), host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency-ms", type=float, default=2.0, help="mean exponential step latency")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port, args.latency_ms / 1000))
