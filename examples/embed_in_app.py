"""An asyncio application that trains an agent while serving a status endpoint.

    python examples/embed_in_app.py --port 8080
    curl http://127.0.0.1:8080/status     # the latest update's metrics, as JSON

Training runs in the application's own event loop (htsrl_aio.Trainer); the HTTP server is plain
asyncio streams, and keeps answering while the learner trains. Ctrl-C stops both cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from htsrl_aio import TrainConfig, Trainer
from htsrl_aio.training import run_event_loop


async def status_server(status: dict[str, Any], port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # skip the headers
        found = request_line.startswith("GET /status ")
        body = json.dumps(status if found else {"error": "try GET /status"}).encode()
        head = (f"HTTP/1.1 {'200 OK' if found else '404 Not Found'}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def run_app(config: TrainConfig, port: int, on_listening: Any = print) -> dict[str, Any]:
    status: dict[str, Any] = {"state": "starting"}
    server = await status_server(status, port)
    async with server:
        on_listening(f"status at http://127.0.0.1:{server.sockets[0].getsockname()[1]}/status")
        async with Trainer(config) as trainer:
            status["state"] = "training"
            async for metrics in trainer.updates():
                status.update(metrics)
        status["state"] = "done"
        return trainer.summary or {}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--total-steps", type=int, default=300_000)
    args = parser.parse_args()
    config = TrainConfig(env="CartPole-v1", total_steps=args.total_steps, progress=False)
    try:
        summary = run_event_loop(run_app(config, args.port))
        print(f"trained: mean return {summary['episode_return_mean']}")
    except KeyboardInterrupt:
        print("stopped")
