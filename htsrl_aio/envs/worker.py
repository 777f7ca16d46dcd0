"""The env worker process: hosts a slice of the env replicas and steps them on command.

It imports no torch. Observations are written straight into the rollout storage's shared memory at
the slot the command names; only ids, actions, rewards and flags travel over the pipe.
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np

from htsrl_aio.envs import state as env_state
from htsrl_aio.envs.factory import EnvFactory
from htsrl_aio.envs.replica import EpisodeTracker, TrackerState
from htsrl_aio.envs.shm import SharedArray, SharedArraySpec


class _Replica(NamedTuple):
    env: Any
    tracker: EpisodeTracker


@dataclass(frozen=True)
class WorkerArgs:
    factory: EnvFactory
    env_ids: tuple[int, ...]
    obs_buffers: tuple[SharedArraySpec, ...]
    final_obs: SharedArraySpec
    run_seed: int
    restart_on_error: bool = False  # --on-env-error restart: re-create a failed env instead of stopping
    lineage: tuple[int, ...] = ()  # a worker started again after its predecessor died: fresh seeds


def worker_main(conn: Connection, args: WorkerArgs) -> None:
    buffers = [SharedArray.attach(spec) for spec in args.obs_buffers]
    final_obs = SharedArray.attach(args.final_obs)
    obs_shape = final_obs.array.shape[1:]
    replicas: dict[int, _Replica] = {}
    try:
        for env_id in args.env_ids:
            tracker = EpisodeTracker(env_id, args.run_seed, obs_shape)
            tracker.lineage = args.lineage
            replicas[env_id] = _Replica(args.factory(), tracker)
        conn.send(("ready", None))
        while True:
            cmd = conn.recv()
            if cmd[0] == "close":
                return
            env_id = cmd[1]
            try:
                if cmd[0] == "set_state":
                    replicas[env_id], reply = _set_state(args.factory, replicas[env_id], *cmd[2:])
                    conn.send(reply)
                else:
                    conn.send(_handle(cmd, replicas[env_id], buffers, final_obs.array))
            except Exception as exc:
                failure = (f"{type(exc).__name__}: {exc}", traceback.format_exc())
                if args.restart_on_error and cmd[0] in ("reset", "step", "restart"):
                    try:
                        replicas[env_id] = _Replica(_recreate(args.factory, replicas[env_id].env),
                                                    replicas[env_id].tracker)
                        result = _start_over(cmd, replicas[env_id], buffers, final_obs.array)
                        conn.send(("restarted", env_id, *failure, result))
                        continue
                    except Exception as again:
                        failure = (f"{type(again).__name__}: {again} (while restarting after {failure[0]})",
                                   traceback.format_exc())
                conn.send(("error", env_id, *failure))
    except Exception as exc:  # env construction failed, or the parent went away
        with contextlib.suppress(OSError):
            conn.send(("error", None, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        for replica in replicas.values():
            with contextlib.suppress(Exception):
                replica.env.close()
        for array in (*buffers, final_obs):
            array.close()


def _set_state(factory: EnvFactory, replica: _Replica, blob: bytes | None,
               tracker: TrackerState) -> tuple[_Replica, tuple]:
    """Load a checkpointed replica; the reply says why the env state was not restored, if it was not."""
    replica.tracker.load(TrackerState(*tracker))
    if blob is None:
        return replica, ("state_set", replica.tracker.env_id, "the env's state could not be saved")
    try:
        env = env_state.restore(blob, replica.env)
    except env_state.ForeignState as exc:
        return replica, ("state_set", replica.tracker.env_id, str(exc))
    if env is not replica.env:
        with contextlib.suppress(Exception):
            replica.env.close()
    return _Replica(env, replica.tracker), ("state_set", replica.tracker.env_id, None)


def _recreate(factory: EnvFactory, broken: Any) -> Any:
    with contextlib.suppress(Exception):
        broken.close()
    return factory()


def _start_over(cmd: tuple, replica: _Replica, buffers: list[SharedArray],
                final_obs: np.ndarray) -> tuple | None:
    """A new episode in place of the step that could not happen; its result fields (None for a reset).

    The lost step counts as a time-limit truncation with reward 0 at the observation it acted on, so
    the learner bootstraps there instead of learning a false terminal state.
    """
    kind, env_id, *rest = cmd
    buf, t = rest[-2:]
    obs, _info = replica.env.reset(seed=replica.tracker.next_reset_seed())
    replica.tracker.write_obs(buffers[buf].array[t, env_id], obs, "reset()")
    if kind == "reset":
        return None
    final_obs[env_id] = buffers[buf].array[t - 1, env_id]
    return (0.0, False, True, None)


def _handle(cmd: tuple, replica: _Replica, buffers: list[SharedArray], final_obs: np.ndarray) -> tuple:
    kind, env_id, *rest = cmd
    env, tracker = replica
    if kind == "get_state":
        return ("state", env_id, env_state.capture(env), tracker.state())
    if kind == "restart":  # its worker died: this env is new, and the step asked of the old one is lost
        return ("step", env_id, *_start_over(cmd, replica, buffers, final_obs))
    if kind == "reset":
        buf, t = rest
        obs, _info = env.reset(seed=tracker.next_reset_seed())
        tracker.write_obs(buffers[buf].array[t, env_id], obs, "reset()")
        return ("reset", env_id)
    action, buf, t = rest
    outcome = tracker.on_step(env.step(action), final_obs[env_id])
    obs = outcome.obs
    if outcome.result.episode is not None:
        obs, _info = env.reset(seed=tracker.next_reset_seed())
    tracker.write_obs(buffers[buf].array[t, env_id], obs, "step()")
    return ("step", env_id, *outcome.result)
