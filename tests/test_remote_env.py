"""The remote-env example: a simulator over TCP on loopback, trained through AsyncEnv clients."""

import argparse
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "remote_env"
sys.path.insert(0, str(EXAMPLE))

import pytest  # noqa: E402
import train_remote  # noqa: E402


def args(logdir: Path) -> argparse.Namespace:
    return argparse.Namespace(num_envs=8, total_steps=8 * 64 * 3, latency_ms=1.0, seed=1, logdir=str(logdir),
                              progress=False)


@pytest.mark.slow
async def test_remote_env_trains_and_its_latency_never_changes_the_result(tmp_path, no_leaks):
    first = await train_remote.main(args(tmp_path / "a"))
    second = await train_remote.main(args(tmp_path / "b"))
    assert first["updates"] == 3 and first["episodes"] > 0
    assert first["final_params_sha256"] == second["final_params_sha256"]
