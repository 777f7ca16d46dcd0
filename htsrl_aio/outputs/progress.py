"""The live progress line: steps, steps/s, mean return and policy lag (tqdm)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class ProgressLine:
    def __init__(self, total_steps: int, enabled: bool, label: str, initial: int = 0) -> None:
        """`initial`: steps already done (a resumed run)."""
        self._bar = tqdm(total=total_steps, initial=initial, disable=not enabled, unit="step",
                         unit_scale=True, desc=label, dynamic_ncols=True, smoothing=0.1)
        self._step = initial

    def update(self, metrics: dict[str, Any]) -> None:
        ret = metrics["episode_return_mean"]
        self._bar.set_postfix_str(
            f"sps={metrics['sps']:.0f} return={'-' if ret is None else f'{ret:.1f}'} "
            f"lag={metrics['policy_lag']}", refresh=False)
        self._bar.update(metrics["global_step"] - self._step)
        self._step = metrics["global_step"]

    def close(self) -> None:
        self._bar.close()
