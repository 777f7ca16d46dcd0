"""The serving example answers as the library's deterministic policy acts, over its line protocol."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

import serve_policy

from htsrl_aio import TrainConfig, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.evaluate import load_policy
from htsrl_aio.models import PolicyMemory


async def play_through_the_server(run: Path, model: Path, steps: int) -> tuple[list, list, list]:
    """Step CartPole with the served actions; return them, the library's for the same observations,
    and the answers to lines that are not observations."""
    policy = await load_policy(run)
    listening: asyncio.Future = asyncio.get_running_loop().create_future()
    server = asyncio.ensure_future(serve_policy.serve(str(model), port=0, on_listening=listening.set_result))
    reader, writer = await asyncio.open_connection("127.0.0.1", await listening)
    env, memory = policy.factory(), PolicyMemory(0)
    obs, _ = env.reset(seed=0)
    served, expected = [], []
    for _ in range(steps):
        writer.write(json.dumps({"obs": obs.tolist()}).encode() + b"\n")
        served.append(json.loads(await reader.readline()))
        expected.append(policy.act(obs, memory, None))
        obs, _, terminated, truncated, _ = env.step(served[-1])
        if terminated or truncated:
            obs, _ = env.reset()
    wrong = []
    for line in (b'{"obs": [1, 2]}', b'{"x": 1}', b"[1]", b"garbage"):
        writer.write(line + b"\n")
        wrong.append(json.loads(await reader.readline()))
    writer.close()
    server.cancel()
    return served, expected, wrong


@pytest.mark.slow
def test_the_served_policy_plays_cartpole_as_the_library_does(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(env="CartPole-v1", num_envs=4, rollout=32, total_steps=4 * 32 * 2, workers=1,
                      logdir=str(run), progress=False))
    model = tmp_path / "cartpole.onnx"
    assert cli_main(["export", str(run), "--format", "onnx", "--output", str(model)]) == 0
    served, expected, wrong = asyncio.run(play_through_the_server(run, model, 200))
    assert served == expected and len(set(served)) == 2
    assert wrong == [{"error": "'obs' has shape (2,), the model takes (4,)"},
                     {"error": "the observation lacks 'obs', inputs of the model"},
                     {"error": "a line must be a JSON object of the model's inputs"},
                     {"error": "Expecting value: line 1 column 1 (char 0)"}]
