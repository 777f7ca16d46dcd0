"""WatchedChild: messages larger than the pipe buffer arrive whole (env states, optimizer states); a child
shows its name in ps."""

import asyncio
import os
from pathlib import Path

import pytest
import uvloop

from htsrl_aio.ipc.children import WatchedChild, close_children

MESSAGES, SIZE = 10, 3_000_000  # far above the 64 KiB a pipe holds


def send_blobs(conn) -> None:
    for i in range(MESSAGES):
        conn.send((i, os.urandom(SIZE)))
    conn.recv()  # until told to close


async def receive_all() -> list[tuple[int, int]]:
    received: list[tuple[int, int]] = []
    done = asyncio.get_running_loop().create_future()

    def on_message(message) -> None:
        received.append((message[0], len(message[1])))
        if len(received) == MESSAGES:
            done.set_result(None)

    def on_exit(code) -> None:
        if not done.done():
            done.set_exception(AssertionError(f"child reported dead (exit code {code}) mid-message"))

    child = WatchedChild("big-sender", send_blobs, (), on_message, on_exit)
    try:
        await done
    finally:
        await close_children([child])
    return received


def test_large_messages_arrive_whole_on_uvloop(no_leaks):
    # uvloop makes watched fds non-blocking; a half-read message used to look like a dead child.
    assert uvloop.run(receive_all()) == [(i, SIZE) for i in range(MESSAGES)]


def test_a_workers_commands_of_one_loop_iteration_travel_as_one_message(tmp_path, monkeypatch, no_leaks):
    """One inference batch answers several envs of a worker at once: their steps go in one message."""
    from htsrl_aio import TrainConfig, train

    sent: list[int] = []
    original = WatchedChild.send

    def counting_send(self, message) -> None:
        if isinstance(message, list):
            sent.append(len(message))
        original(self, message)

    monkeypatch.setattr(WatchedChild, "send", counting_send)
    num_envs, rollout, updates = 4, 16, 2
    train(TrainConfig(env="CartPole-v1", num_envs=num_envs, rollout=rollout, workers=1, minibatches=2,
                      total_steps=num_envs * rollout * updates, logdir=str(tmp_path / "run"), progress=False))
    commands = sum(sent)
    assert commands >= num_envs * rollout * updates  # every step (and reset) went to the worker
    assert len(sent) < commands / 2 and max(sent) == num_envs


def say_ready(conn) -> None:
    conn.send("ready")
    conn.recv()  # until told to close


async def comm_of_child(name: str) -> str:
    ready = asyncio.get_running_loop().create_future()
    child = WatchedChild(name, say_ready, (), ready.set_result, lambda code: None)
    try:
        await ready
        return Path(f"/proc/{child.process.pid}/comm").read_text().strip()
    finally:
        await close_children([child])


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="Linux /proc")
def test_a_child_shows_its_name_in_ps(no_leaks):
    # ps, top and the soak benchmark tell an env worker from the learner by it, not "python" for all.
    assert uvloop.run(comm_of_child("htsrl-env-worker-3")) == "htsrl-env-worke"
