"""The AsyncEnv protocol: gymnasium's Env with coroutines, for I/O-bound environments.

A simulator behind a socket, a game server, a web service: its step mostly waits. An AsyncEnv runs as
coroutines on the training event loop (no process), so thousands of them can wait at once.

    class MyEnv:
        observation_space = gymnasium.spaces.Box(-1, 1, (4,))
        action_space = gymnasium.spaces.Discrete(2)
        async def reset(self, *, seed=None, options=None): ...  # -> (obs, info)
        async def step(self, action): ...  # -> (obs, reward, terminated, truncated, info)
        async def close(self): ...  # optional

A factory given as `env` may return either a gymnasium env (stepped in worker processes) or an
AsyncEnv (stepped in the loop); the runtime tells them apart by whether reset and step are coroutines.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym


@runtime_checkable
class AsyncEnv(Protocol):
    observation_space: gym.Space
    action_space: gym.Space

    async def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]: ...

    async def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]: ...


def is_async_env(env: Any) -> bool:
    """True when reset and step are coroutine functions; raise if only one of them is."""
    reset_async = inspect.iscoroutinefunction(getattr(env, "reset", None))
    step_async = inspect.iscoroutinefunction(getattr(env, "step", None))
    if reset_async != step_async:
        which, other = ("reset", "step") if reset_async else ("step", "reset")
        raise TypeError(f"{which}() is a coroutine but {other}() is not: an AsyncEnv needs both to be "
                        "'async def', a gymnasium env neither")
    return reset_async


async def close_env(env: Any) -> None:
    """Call the env's close(), awaiting it when it is a coroutine (it is optional for an AsyncEnv)."""
    close = getattr(env, "close", None)
    if close is None:
        return
    result = close()
    if inspect.isawaitable(result):
        await result
