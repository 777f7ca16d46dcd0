"""RemoteCartPole: an AsyncEnv whose reset and step are requests to the simulator in server.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import gymnasium as gym
import numpy as np


class RemoteCartPole:
    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _request(self, **request: Any) -> dict[str, Any]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        line = await self._reader.readline()
        if not line:
            raise ConnectionError(f"the simulator at {self.host}:{self.port} closed the connection")
        return json.loads(line)

    async def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        reply = await self._request(cmd="reset", seed=seed)
        return np.asarray(reply["obs"], dtype=np.float32), {}

    async def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reply = await self._request(cmd="step", action=int(action))
        obs = np.asarray(reply["obs"], dtype=np.float32)
        return obs, reply["reward"], reply["terminated"], reply["truncated"], {}

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._writer = None
