"""Serve a policy exported by `htsrl-aio export RUN --format onnx` to other programs, on asyncio.

    htsrl-aio export runs/cartpole --format onnx
    python examples/serve_policy.py runs/cartpole/policy.onnx --port 8765

A client sends one observation per line as a JSON object of the model's inputs, named after the
observation keys ({"obs": [0.01, -0.02, 0.03, 0.04]} for CartPole), and gets the action back as one
JSON line (1, or [0, 2], or [0.5, -1.0]); a line it cannot read gets {"error": "..."}. A policy with
memory keeps one state per connection (one connection per env): it starts at the first line and again
at a line that carries "episode_start": true. onnxruntime runs in the loop's thread pool, so the loop
goes on serving other connections meanwhile. Needs numpy and onnxruntime only (the export extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime

MEMORY_IN, EPISODE_START = "memory_in", "episode_start"
DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(bool)": np.bool_,
          "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int16)": np.int16,
          "tensor(int32)": np.int32, "tensor(int64)": np.int64}


class ExportedPolicy:
    """The exported model for one observation at a time, with the recurrent state passed in and out."""

    def __init__(self, path: str) -> None:
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.memory_size = inputs[MEMORY_IN].shape[1] if MEMORY_IN in inputs else 0
        self.obs = {name: (DTYPES[i.type], tuple(i.shape[1:])) for name, i in inputs.items()
                    if name not in (MEMORY_IN, EPISODE_START)}

    def initial_state(self) -> np.ndarray:
        return np.zeros((1, self.memory_size), np.float32)

    def act(self, obs: dict[str, Any], state: np.ndarray, start: bool) -> tuple[Any, np.ndarray]:
        """(action as JSON values, next state) for one observation; raises ValueError for an observation
        that lacks an input or does not fit it."""
        missing = [name for name in self.obs if name not in obs]
        if missing:
            raise ValueError(f"the observation lacks {', '.join(map(repr, missing))}, inputs of the model")
        feed = {name: self._array(obs[name], name, dtype, shape) for name, (dtype, shape) in self.obs.items()}
        if self.memory_size:
            feed |= {MEMORY_IN: state, EPISODE_START: np.array([start])}
        outputs = self.session.run(None, feed)
        return outputs[0][0].tolist(), outputs[1] if self.memory_size else state

    @staticmethod
    def _array(value: Any, name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        array = np.asarray(value, dtype)
        if array.shape != shape:
            raise ValueError(f"{name!r} has shape {array.shape}, the model takes {shape}")
        return array[None]


async def serve_connection(policy: ExportedPolicy, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    state, start = policy.initial_state(), True
    async for line in reader:
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("a line must be a JSON object of the model's inputs")
            start = bool(message.pop(EPISODE_START, False)) or start
            action, state = await loop.run_in_executor(None, policy.act, message, state, start)
            reply: Any = action
            start = False
        except (ValueError, TypeError) as exc:  # not JSON, or not the model's inputs
            reply = {"error": str(exc)}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
    writer.close()


async def serve(path: str, host: str = "127.0.0.1", port: int = 8765,
                on_listening: Callable[[int], None] = lambda port: None) -> None:
    """Serve the policy at `path` until cancelled; `on_listening(port)` once it accepts connections."""
    policy = ExportedPolicy(path)
    server = await asyncio.start_server(lambda r, w: serve_connection(policy, r, w), host, port)
    async with server:
        on_listening(server.sockets[0].getsockname()[1])
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an ONNX file written by htsrl-aio export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    asyncio.run(serve(args.model, args.host, args.port, lambda port: print(f"serving on {args.host}:{port}")))


if __name__ == "__main__":
    main()
