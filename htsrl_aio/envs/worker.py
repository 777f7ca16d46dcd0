"""The env worker process: hosts a slice of the env replicas and steps them on command.

It imports no torch. Observations are written straight into the rollout storage's shared memory at
the slot the command names; only ids, actions, rewards and flags travel over the pipe.
"""

from __future__ import annotations

import contextlib
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from htsrl_aio.envs.factory import EnvFactory
from htsrl_aio.envs.shm import SharedArray, SharedArraySpec
from htsrl_aio.seeding import Stream, derive_seed


@dataclass(frozen=True)
class WorkerArgs:
    factory: EnvFactory
    env_ids: tuple[int, ...]
    obs_buffers: tuple[SharedArraySpec, ...]
    final_obs: SharedArraySpec
    run_seed: int


class _Replica:
    """One env with its episode bookkeeping."""

    def __init__(self, env: Any, env_id: int, run_seed: int) -> None:
        self.env = env
        self.env_id = env_id
        self.run_seed = run_seed
        self.episodes = 0
        self.episode_return = 0.0
        self.episode_length = 0

    def reset(self) -> np.ndarray:
        # Episode k of env i always starts from the same seed, however the run was scheduled.
        seed = derive_seed(self.run_seed, Stream.ENV_RESET, self.env_id, self.episodes)
        self.episodes += 1
        self.episode_return, self.episode_length = 0.0, 0
        obs, _info = self.env.reset(seed=seed)
        return obs


def worker_main(conn: Connection, args: WorkerArgs) -> None:
    # Ctrl-C goes to the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    buffers = [SharedArray.attach(spec) for spec in args.obs_buffers]
    final_obs = SharedArray.attach(args.final_obs)
    obs_shape = final_obs.array.shape[1:]
    replicas: dict[int, _Replica] = {}
    try:
        for env_id in args.env_ids:
            replicas[env_id] = _Replica(args.factory(), env_id, args.run_seed)
        conn.send(("ready", None))
        while True:
            cmd = conn.recv()
            if cmd[0] == "close":
                return
            env_id = cmd[1]
            try:
                conn.send(_handle(cmd, replicas[env_id], buffers, final_obs.array, obs_shape))
            except Exception as exc:
                conn.send(("error", env_id, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    except Exception as exc:  # env construction failed, or the parent went away
        with contextlib.suppress(OSError):
            conn.send(("error", None, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        for replica in replicas.values():
            with contextlib.suppress(Exception):
                replica.env.close()
        for array in (*buffers, final_obs):
            array.close()


def _handle(cmd: tuple, replica: _Replica, buffers: list[SharedArray], final_obs: np.ndarray,
            obs_shape: tuple[int, ...]) -> tuple:
    kind, env_id = cmd[0], cmd[1]
    if kind == "reset":
        _, _, buf, t = cmd
        _write_obs(buffers[buf].array[t, env_id], replica.reset(), obs_shape, "reset()")
        return ("reset", env_id)
    _, _, action, buf, t = cmd
    obs, reward, terminated, truncated, _info = replica.env.step(action)
    if not isinstance(reward, (int, float, np.integer, np.floating)) or isinstance(reward, bool):
        raise TypeError(f"step() returned a reward of type {type(reward).__name__}; it must be a number")
    reward = float(reward)
    replica.episode_return += reward
    replica.episode_length += 1
    episode = None
    if terminated or truncated:
        episode = (replica.episode_return, replica.episode_length)
        # The final observation is kept apart: a truncated episode bootstraps from its value.
        _write_obs(final_obs[env_id], obs, obs_shape, "step()")
        obs = replica.reset()
    _write_obs(buffers[buf].array[t, env_id], obs, obs_shape, "step()")
    return ("step", env_id, reward, bool(terminated), bool(truncated), episode)


def _write_obs(target: np.ndarray, obs: Any, obs_shape: tuple[int, ...], where: str) -> None:
    if np.shape(obs) != obs_shape:
        raise ValueError(
            f"{where} returned an observation of shape {np.shape(obs)} but the observation_space "
            f"says {obs_shape}")
    target[...] = obs
