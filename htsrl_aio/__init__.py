"""htsrl-aio: High-Throughput Synchronous RL (Liu, Yeh & Schwing, NeurIPS 2020) on asyncio."""

from htsrl_aio.config import ConfigError, TrainConfig
from htsrl_aio.envs.async_env import AsyncEnv
from htsrl_aio.errors import EnvError, HtsrlError
from htsrl_aio.train import resume, resume_async, train, train_async
from htsrl_aio.trainer import RunStopped, Trainer

__version__ = "0.1.0"

__all__ = ["AsyncEnv", "ConfigError", "EnvError", "HtsrlError", "RunStopped", "TrainConfig", "Trainer",
           "__version__", "resume", "resume_async", "train", "train_async"]
