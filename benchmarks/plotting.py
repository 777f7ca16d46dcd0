"""matplotlib for the benchmark scripts, which must also run without it (it is in the `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot on a file-only backend, or None (with a hint) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: install the bench extra (pip install -e '.[bench]') for matplotlib")
        return None
    return plt


def save(fig: Any, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    print(f"plot: {path}")


def football_id(source: str, scenario: str) -> str:
    """The --env of a GFootball scenario from EnvPool's wheel or from gfootball built from source."""
    return f"envpool:gfootball/{scenario}-v1" if source == "envpool" else f"gfootball/{scenario}"
