"""`htsrl-aio eval`: play a trained agent for N episodes and report the return, optionally to video.

Episodes run one after another, seeded from the run seed on a stream training never uses, so an
evaluation is repeatable and independent of how the run was scheduled. Returns are the game's own (an
env's `info["raw_reward"]` when it trains on clipped rewards), and with episodic life an episode is a
whole game. The env runs in a child process, as training's do: each of its calls is bounded by
--env-timeout, and Ctrl-C stops an evaluation whatever the env is doing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsrl_aio import checkpoint
from htsrl_aio.backends.child_env import GETATTR, MAKE, ChildEnv
from htsrl_aio.config import TrainConfig
from htsrl_aio.distributions import ActionDistribution, make_distribution
from htsrl_aio.envs import probe_env, resolve_env
from htsrl_aio.envs.factory import EnvFactory, EnvSpec, ImportedCallable, agent_observation
from htsrl_aio.errors import ConfigError
from htsrl_aio.models import ActorCritic, PolicyMemory, build_model, load_params
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
                   video: str | Path | None = None, seed: int | None = None,
                   env_timeout: float | None = None) -> EvalResult:
    """Play the policy of checkpoint `path` (or a run directory's newest) for `episodes` episodes.

    `env_timeout`: seconds each of the env's calls may take (0: no limit; default: the run's
    --env-timeout); one that takes longer ends the evaluation with EnvError, as an env that raises does.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {episodes}.")
    policy = await load_policy(path, env_timeout)
    cfg = policy.config
    timeout = cfg.env_timeout or None
    seed = cfg.seed if seed is None else seed
    rng = None if deterministic else generator(seed, Stream.EVAL_ACT)
    returns, lengths = [], []
    async with contextlib.AsyncExitStack() as stack:
        writer = _video_writer(video) if video is not None else None
        if writer is not None:
            stack.callback(writer.close)
        env = await _make_env(policy.factory, timeout, stack, rendered=writer is not None)
        renders = writer is not None and await _render_mode(env) == "rgb_array"
        play = _play_agents if policy.spec.agents else _play
        for episode in range(episodes):
            episode_seed = derive_seed(seed, Stream.EVAL_RESET, episode) % ENV_SEED_BOUND
            ret, length = await play(env, policy, episode_seed, rng, writer, renders)
            returns.append(ret)
            lengths.append(length)
    return EvalResult(str(policy.file), policy.update, returns, lengths)


@dataclasses.dataclass(frozen=True)
class TrainedPolicy:
    """A checkpoint's policy as eval plays it: the network with the checkpoint's parameters (in eval
    mode), its action distribution, and the env it was trained on with that env's spaces."""

    file: Path
    update: int
    config: TrainConfig
    factory: EnvFactory
    spec: EnvSpec
    model: ActorCritic
    distribution: ActionDistribution

    def act(self, obs: Any, memory: PolicyMemory, rng: np.random.Generator | None) -> Any:
        """The action for one env observation, as `env.step` takes it: the mode when `rng` is None, else
        a sample whose noise comes from `rng`; `memory` carries the env's recurrent state and advances."""
        with torch.no_grad():
            encoded = {key: torch.from_numpy(a)[None] for key, a in self.spec.policy_obs.encode(obs).items()}
            params, state = self.model.act(encoded, torch.from_numpy(memory.state),
                                           torch.from_numpy(memory.start))
            memory.advance(state.numpy())
            action = self.distribution.choose(params, rng)[0].numpy()
        return self.spec.action.to_env(action)


async def load_policy(path: str | Path, env_timeout: float | None = None) -> TrainedPolicy:
    """The policy of checkpoint `path`, or of a run directory's newest checkpoint; the env is probed (in
    a child process, each call bounded by `env_timeout`, default the run's) for its spaces."""
    path = Path(path)
    file = path if path.is_file() else checkpoint.newest(path, resumable=False)
    state = checkpoint.load(file)
    cfg = _config(state.config, file, env_timeout)
    factory = resolve_env(cfg.env, cfg)
    factory, spec = await probe_env(factory, cfg.env_timeout or None, isolated=True)
    model = build_model(spec, cfg)
    load_params(model, state.model, str(file), f"env {factory.name!r} ({spec.describe()})")
    model.eval()
    return TrainedPolicy(file, state.update, cfg, factory, spec, model, make_distribution(spec.action))


async def _play(env: ChildEnv, policy: TrainedPolicy, seed: int, rng: np.random.Generator | None,
                writer: Any, renders: bool) -> tuple[float, int]:
    """One episode; actions are the mode when `rng` is None, else sampled with its noise; frames go to
    `writer` (if any), rendered by the env if it `renders`."""
    obs, _ = await env.call("reset", seed=seed)
    total, length = 0.0, 0
    memory = PolicyMemory(policy.model.state_size)
    while True:
        if writer is not None:
            writer.append_data(await _frame(env, obs, renders))
        obs, reward, terminated, truncated, info = await env.call("step", policy.act(obs, memory, rng))
        total += float(info.get("raw_reward", reward))
        length += 1
        if terminated:  # as in training, where a lost life (episodic life) ends an episode: memory resets
            memory.reset()
        # Episodic life ends a training episode at a lost life; the game, and the evaluation, go on.
        if truncated or (terminated and info.get("game_over", True)):
            return total, length


async def _play_agents(env: ChildEnv, policy: TrainedPolicy, seed: int, rng: np.random.Generator | None,
                       writer: Any, renders: bool) -> tuple[float, int]:
    """One episode of a multi-agent env, every agent acting with the shared policy; its return is the
    mean over agents of each agent's return (as training's episode_return_mean); frames as `_play`'s,
    from the env's own rendering of the whole scene."""
    spec = policy.spec
    obs, _ = await env.call("reset", seed=seed)
    totals: dict[str, float] = {}
    memories: dict[str, PolicyMemory] = {}
    length = 0
    live: list[str] = []
    while True:
        # The agents in the episode are the env's `agents`: one that joins (or comes back) starts with a
        # fresh memory, as its row does in training.
        present = await _agents_in_episode(env, spec)
        if not present:
            return float(np.mean(list(totals.values()))), length
        for agent in present:
            if agent not in live:
                memories[agent] = PolicyMemory(policy.model.state_size)
                totals.setdefault(agent, 0.0)
        live = present
        if writer is not None:
            writer.append_data(await _frame(env, obs, renders))
        actions = {agent: policy.act(agent_observation(spec, obs, agent), memories[agent], rng)
                   for agent in live}
        obs, rewards, _, _, _ = await env.call("step", actions)
        for agent in live:
            totals[agent] += float(rewards.get(agent, 0.0))
        length += 1


async def _agents_in_episode(env: ChildEnv, spec: EnvSpec) -> list[str]:
    agents = await env.call(GETATTR, "agents", [])
    return [agent for agent in spec.agents if agent in agents]


def _config(values: dict[str, Any], file: Path, env_timeout: float | None) -> TrainConfig:
    config = TrainConfig.from_json_dict(values, str(file))
    timeout = {} if env_timeout is None else {"env_timeout": env_timeout}
    return dataclasses.replace(config, progress=False, **timeout).resolved()  # which checks it


async def _make_env(factory: EnvFactory, timeout: float | None, stack: contextlib.AsyncExitStack,
                    rendered: bool) -> ChildEnv:
    """The env as training built it (id or factory, --env-kwargs, frame options), closed by `stack`; for
    a video, built again with render_mode="rgb_array" where it renders such frames but was not asked to."""
    env = await _started(factory, timeout, stack)
    # A C++ engine cannot render: its frames come from its observations (`_frame`).
    if not rendered or factory.engine is not None or await _render_mode(env) == "rgb_array":
        return env
    metadata = await env.call(GETATTR, "metadata", None)
    modes = metadata.get("render_modes", []) if isinstance(metadata, dict) else []
    if "rgb_array" not in modes:
        raise ConfigError(f"--video needs frames, but env {factory.name!r} cannot render them (its "
                          f"render_modes are {modes}, without 'rgb_array'); evaluate it without --video.")
    if factory.factory is not None and not _takes(factory.factory, "render_mode"):
        raise ConfigError(f"--video needs frames, but the factory {factory.name!r} takes no render_mode "
                          "argument; give it one and pass it to the env (or create the env with "
                          "render_mode='rgb_array').")
    await env.aclose()
    kwargs = tuple(sorted({**dict(factory.kwargs), "render_mode": "rgb_array"}.items()))
    return await _started(dataclasses.replace(factory, kwargs=kwargs), timeout, stack)


async def _started(factory: EnvFactory, timeout: float | None, stack: contextlib.AsyncExitStack) -> ChildEnv:
    env = ChildEnv(factory, timeout)
    stack.push_async_callback(env.aclose)
    await env.call(MAKE)
    return env


async def _render_mode(env: ChildEnv) -> Any:
    return await env.call(GETATTR, "render_mode", None)


def _takes(function: Any, name: str) -> bool:
    """Whether `function` takes the keyword argument `name` (by name, or as one of its **kwargs, as
    PettingZoo's parallel_env does)."""
    if isinstance(function, ImportedCallable):  # PettingZoo's parallel_env: the function it names
        function = function.target()
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


async def _frame(env: ChildEnv, obs: Any, renders: bool) -> np.ndarray:
    """An RGB frame: the env's render, or the newest frame of an image observation (Atari's 84x84)."""
    if renders:
        return np.asarray(await env.call("render"))
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
