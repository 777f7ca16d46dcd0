"""`htsrl-aio eval`: play a trained agent for N episodes and report the return, optionally to video.

Episodes run one after another in this process, seeded from the run seed on a stream training never
uses, so an evaluation is repeatable and independent of how the run was scheduled. Returns are the
game's own (an env's `info["raw_reward"]` when it trains on clipped rewards), and with episodic life
an episode is a whole game.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsrl_aio import checkpoint
from htsrl_aio.config import TrainConfig
from htsrl_aio.distributions import ActionDistribution, make_distribution
from htsrl_aio.envs import probe_env, resolve_env
from htsrl_aio.envs.async_env import close_env
from htsrl_aio.envs.factory import EnvFactory, EnvSpec
from htsrl_aio.errors import ConfigError
from htsrl_aio.models import PolicyMemory, build_model
from htsrl_aio.seeding import ENV_SEED_BOUND, Stream, derive_seed, generator

VIDEO_FPS = 30


@dataclasses.dataclass(frozen=True)
class EvalResult:
    checkpoint: str
    update: int
    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


async def evaluate(path: str | Path, episodes: int = 10, deterministic: bool = False,
                   video: str | Path | None = None, seed: int | None = None) -> EvalResult:
    """Play the policy of checkpoint `path` (or a run directory's newest) for `episodes` episodes."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {episodes}.")
    writer = _video_writer(video) if video is not None else None
    path = Path(path)
    file = path if path.is_file() else checkpoint.newest(path, resumable=False)
    state = checkpoint.load(file)
    cfg = _config(state.config, file)
    factory = resolve_env(cfg.env, cfg)
    spec = await probe_env(factory)
    model = build_model(spec, cfg)
    try:
        model.load_state_dict(state.model)
    except RuntimeError as exc:
        raise ConfigError(f"the parameters in {file} do not fit the network of its config: "
                          f"{str(exc).splitlines()[0]}") from None
    model.eval()
    seed = cfg.seed if seed is None else seed
    rng = None if deterministic else generator(seed, Stream.EVAL_ACT)
    env = await _make_env(factory, rendered=writer is not None)
    distribution = make_distribution(spec.action)
    returns, lengths = [], []
    try:
        for episode in range(episodes):
            episode_seed = derive_seed(seed, Stream.EVAL_RESET, episode) % ENV_SEED_BOUND
            ret, length = await _play(env, spec, model, distribution, episode_seed, rng, writer)
            returns.append(ret)
            lengths.append(length)
    finally:
        await close_env(env)
        if writer is not None:
            writer.close()
    return EvalResult(str(file), state.update, returns, lengths)


async def _play(env: Any, spec: EnvSpec, model: torch.nn.Module, distribution: ActionDistribution, seed: int,
                rng: np.random.Generator | None, writer: Any) -> tuple[float, int]:
    """One episode; actions are the mode when `rng` is None, else sampled with its noise."""
    obs, _ = await _maybe_await(env.reset(seed=seed))
    total, length = 0.0, 0
    memory = PolicyMemory(model.state_size)
    while True:
        if writer is not None:
            writer.append_data(_frame(env, obs))
        with torch.no_grad():
            encoded = {key: torch.from_numpy(a)[None] for key, a in spec.obs.encode(obs).items()}
            params, _, state = model.step(encoded, torch.from_numpy(memory.state),
                                          torch.from_numpy(memory.start))
            memory.advance(state.numpy())
            action = distribution.choose(params, rng)[0].numpy()
        obs, reward, terminated, truncated, info = await _maybe_await(env.step(spec.action.to_env(action)))
        total += float(info.get("raw_reward", reward))
        length += 1
        if terminated:  # as in training, where a lost life (episodic life) ends an episode: memory resets
            memory.reset()
        # Episodic life ends a training episode at a lost life; the game, and the evaluation, go on.
        if truncated or (terminated and info.get("game_over", True)):
            return total, length


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _config(values: dict[str, Any], file: Path) -> TrainConfig:
    config = TrainConfig.from_json_dict(values, str(file))
    return dataclasses.replace(config, progress=False).resolved()


async def _make_env(factory: EnvFactory, rendered: bool) -> Any:
    """The env as training built it (id or factory, --env-kwargs, frame options); for a video, built
    again with render_mode="rgb_array" where it renders such frames but was not asked to."""
    env = factory()
    # A C++ engine cannot render: its frames come from its observations (`_frame`).
    if not rendered or factory.engine is not None or getattr(env, "render_mode", None) == "rgb_array":
        return env
    metadata = getattr(env, "metadata", None)
    modes = metadata.get("render_modes", []) if isinstance(metadata, dict) else []
    await close_env(env)
    if "rgb_array" not in modes:
        raise ConfigError(f"--video needs frames, but env {factory.name!r} cannot render them (its "
                          f"render_modes are {modes}, without 'rgb_array'); evaluate it without --video.")
    if factory.factory is not None and "render_mode" not in _parameters(factory.factory):
        raise ConfigError(f"--video needs frames, but the factory {factory.name!r} takes no render_mode "
                          "argument; give it one and pass it to the env (or create the env with "
                          "render_mode='rgb_array').")
    kwargs = tuple(sorted({**dict(factory.kwargs), "render_mode": "rgb_array"}.items()))
    return dataclasses.replace(factory, kwargs=kwargs)()


def _parameters(function: Any) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return set()


def _frame(env: Any, obs: Any) -> np.ndarray:
    """An RGB frame: the env's render, or the newest frame of an image observation (Atari's 84x84)."""
    if getattr(env, "render_mode", None) == "rgb_array":
        return np.asarray(env.render())
    obs = np.asarray(obs)
    if obs.ndim == 3 and obs.dtype == np.uint8:
        gray = obs[-1]
        return np.repeat(gray[:, :, None], 3, axis=2)
    raise ConfigError("--video needs frames: this env has no rgb_array rendering and its observations are "
                      "not images.")


def _video_writer(path: str | Path) -> Any:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise ConfigError("--video needs the video extra: pip install 'htsrl-aio[video]'.") from None
    try:
        return imageio.get_writer(str(path), fps=VIDEO_FPS, macro_block_size=1)
    except Exception as exc:  # no ffmpeg backend, unwritable path
        raise ConfigError(f"cannot write video {path}: {exc}") from None


def format_result(result: EvalResult) -> str:
    sem = result.std / math.sqrt(len(result.returns))
    return (f"{len(result.returns)} episodes from {result.checkpoint} (update {result.update}): "
            f"return {result.mean:.2f} +- {result.std:.2f} (std; standard error {sem:.2f}), "
            f"mean length {np.mean(result.lengths):.1f}")
