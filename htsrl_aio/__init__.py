"""htsrl-aio: High-Throughput Synchronous RL (Liu, Yeh & Schwing, NeurIPS 2020) on asyncio.

The public names are imported on first use (PEP 562), so a process that needs only a submodule (an
env worker imports htsrl_aio.backends.worker) does not load torch and the runtime.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Intel MKL (torch's CPU BLAS) may pick different kernels, and so round differently, from call to call
# on AVX-512 machines (seen: a resumed run drifting from the uninterrupted one in the 7th digit).
# Conditional Numerical Reproducibility in strict mode fixes its results. MKL reads this when it first
# runs, so it is set before any torch work; processes this one starts inherit it. A user's own value
# wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncEnv": "htsrl_aio.envs.async_env",
    "ConfigError": "htsrl_aio.errors",
    "TrainConfig": "htsrl_aio.config",
    "EnvError": "htsrl_aio.errors",
    "HtsrlError": "htsrl_aio.errors",
    "RunInterrupted": "htsrl_aio.errors",
    "RunStopped": "htsrl_aio.trainer",
    "Trainer": "htsrl_aio.trainer",
    "resume": "htsrl_aio.training",
    "resume_async": "htsrl_aio.training",
    "train": "htsrl_aio.training",
    "train_async": "htsrl_aio.training",
}

__all__ = ["AsyncEnv", "ConfigError", "EnvError", "HtsrlError", "RunInterrupted", "RunStopped", "TrainConfig",
           "Trainer", "__version__", "resume", "resume_async", "train", "train_async"]

if TYPE_CHECKING:
    from htsrl_aio.config import TrainConfig
    from htsrl_aio.envs.async_env import AsyncEnv
    from htsrl_aio.errors import ConfigError, EnvError, HtsrlError, RunInterrupted
    from htsrl_aio.trainer import RunStopped, Trainer
    from htsrl_aio.training import resume, resume_async, train, train_async


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'htsrl_aio' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
