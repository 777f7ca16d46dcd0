"""The embedding example answers HTTP while it trains."""

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

import embed_in_app

from htsrl_aio import TrainConfig


async def get_status(port: int) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    assert response.startswith("HTTP/1.1 200 OK")
    return json.loads(response.split("\r\n\r\n", 1)[1])


async def test_status_endpoint_reports_training_while_it_runs(tmp_path, no_leaks):
    listening: asyncio.Future = asyncio.get_running_loop().create_future()
    config = TrainConfig(env="CartPole-v1", num_envs=4, rollout=32, total_steps=4 * 32 * 40, workers=2,
                         logdir=str(tmp_path / "run"), progress=False)
    app = asyncio.ensure_future(embed_in_app.run_app(config, 0, listening.set_result))
    port = int((await asyncio.wait_for(listening, 60)).rsplit(":", 1)[1].split("/")[0])
    seen_training = None
    while not app.done():
        status = await get_status(port)
        if status.get("state") == "training" and status.get("update"):
            seen_training = status
            break
        await asyncio.sleep(0.05)  # polling a live server, not synchronising with it
    summary = await asyncio.wait_for(app, 300)
    assert seen_training is not None and seen_training["update"] >= 1
    assert summary["updates"] == 40
