"""`htsrl-aio plot`: learning curves and runtime health of one or more runs on one figure.

Panels: episode return vs env steps, episode return vs wall-clock, steps/s, policy lag, and the
learner/collector busy fractions. matplotlib comes from the optional `plot` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from htsrl_aio.errors import ConfigError
from htsrl_aio.outputs.run_dir import CONFIG, METRICS, read_metrics


def load_run(run: Path) -> tuple[str, list[dict[str, Any]]]:
    """A legend label ('<dir> (<mode> <algo>)') and the metrics rows of one run directory."""
    metrics = run / METRICS
    if not metrics.is_file():
        raise ConfigError(f"{run} is not a run directory: it has no {METRICS}.")
    rows = read_metrics(run)
    config = json.loads((run / CONFIG).read_text()) if (run / CONFIG).is_file() else {}
    return f"{run.name} ({config.get('mode', '?')} {config.get('algo', '?')})", rows


def plot_runs(runs: list[Path], out: Path) -> Any:
    """Draw every run on one figure, save it to `out`, and return the figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("htsrl-aio plot needs matplotlib: pip install 'htsrl-aio[plot]'.") from None
    loaded = [load_run(run) for run in runs]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    (ret_steps, ret_time, sps), (lag, learner, collector) = axes
    for label, rows in loaded:
        steps = [r["global_step"] for r in rows]
        returns = [r["episode_return_mean"] for r in rows]
        ret_steps.plot(steps, returns, label=label)
        ret_time.plot([r["wall_time_s"] for r in rows], returns, label=label)
        sps.plot(steps, [r["sps"] for r in rows], label=label)
        lag.plot(steps, [r["policy_lag"] for r in rows], drawstyle="steps-post", label=label)
        learner.plot(steps, [r["learner_busy_frac"] for r in rows], label=label)
        collector.plot(steps, [r["collector_busy_frac"] for r in rows], label=label)
    titles = [(ret_steps, "env steps", "mean episode return (last 100)"),
              (ret_time, "wall-clock seconds", "mean episode return (last 100)"),
              (sps, "env steps", "env steps/s"), (lag, "env steps", "policy lag (updates)"),
              (learner, "env steps", "learner busy fraction"),
              (collector, "env steps", "collector busy fraction")]
    for ax, xlabel, ylabel in titles:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ret_steps.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig
