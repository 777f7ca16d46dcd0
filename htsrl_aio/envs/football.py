"""Google Research Football as a gymnasium env: `--env gfootball/<scenario>`.

gfootball speaks the old gym API (`reset() -> obs`, `step() -> 4-tuple`) and needs gym 0.25.2; this
adapter imports it lazily, inside the process that builds the env, and presents gymnasium's 5-tuple,
so the user's own gym/gymnasium are never touched. Options are TrainConfig fields, like Atari's:

    --football-representation simple115v2   115-float vector (MLP); the default
    --football-representation extracted     SMM 4x72x96, 4 frames stacked -> uint8 (16, 72, 96) (CNN)
    --football-rewards scoring,checkpoints  + the checkpoint shaping reward (default: scoring)
    --football-players 3                    control 3 left players, each an agent (`FootballTeam`)

Determinism: every reset seeds the game engine (`game_engine_random_seed`) from the runtime's reset
seed, which derives from (run seed, env, episode), so an episode's play depends on nothing else.
Games are saveable (`get_state`/`set_state`, through gfootball's own snapshots), so a run resumes from a
periodic checkpoint bit for bit.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from htsrl_aio.errors import ConfigError

PREFIX = "gfootball/"
INSTALL_HINT = ("install it with scripts/install-football.sh (it builds gfootball 2.10.2 from source "
                "and pins gym==0.25.2; `pip install -e '.[football]'` alone lacks the engine's system "
                "libraries)")

ACADEMY_SCENARIOS = (
    "academy_empty_goal_close", "academy_empty_goal", "academy_run_to_score",
    "academy_run_to_score_with_keeper", "academy_pass_and_shoot_with_keeper",
    "academy_run_pass_and_shoot_with_keeper", "academy_3_vs_1_with_keeper", "academy_corner",
    "academy_counterattack_easy", "academy_counterattack_hard", "academy_single_goal_versus_lazy",
)
FULL_GAME_SCENARIOS = (
    "11_vs_11_stochastic", "11_vs_11_easy_stochastic", "11_vs_11_hard_stochastic",
    "11_vs_11_competition", "11_vs_11_kaggle",
)
SCENARIOS = ACADEMY_SCENARIOS + FULL_GAME_SCENARIOS
REPRESENTATIONS = ("simple115v2", "extracted")
REWARDS = ("scoring", "scoring,checkpoints")
NUM_STACKED = 4  # frames stacked for `extracted`, as in the paper
# Players of the left team (the goalkeeper included) in gfootball 2.10.2's scenarios: the most
# --football-players can control (tests/test_football.py checks the table against the engine).
LEFT_TEAM_SIZES = {"academy_empty_goal_close": 2, "academy_empty_goal": 2, "academy_run_to_score": 2,
                   "academy_run_to_score_with_keeper": 2, "academy_pass_and_shoot_with_keeper": 3,
                   "academy_run_pass_and_shoot_with_keeper": 3, "academy_3_vs_1_with_keeper": 4,
                   **dict.fromkeys(SCENARIOS[7:], 11)}
MAX_ENGINE_SEED = 2_000_000_000  # gfootball draws its own engine seeds from [0, 2e9]


@dataclass(frozen=True)
class FootballSpec:
    """One game to build: a scenario and the options of `--football-representation/-rewards`."""

    scenario: str
    representation: str = "simple115v2"
    rewards: str = "scoring"
    players: int = 1  # --football-players: left players controlled; more than 1 makes a FootballTeam


def is_football_id(env_id: str) -> bool:
    return env_id.startswith(PREFIX)


def parse_football_id(env_id: str, representation: str = "simple115v2", rewards: str = "scoring",
                      players: int = 1) -> FootballSpec:
    """`gfootball/<scenario>` and the options -> FootballSpec; ConfigError (one sentence) if wrong."""
    scenario = env_id[len(PREFIX):]
    if "/" in scenario:
        raise ConfigError(
            f"--env {env_id!r}: a gfootball id is gfootball/<scenario>; choose the representation and "
            f"rewards with --football-representation ({' or '.join(REPRESENTATIONS)}) and "
            f"--football-rewards ({' or '.join(REWARDS)}).")
    if scenario not in SCENARIOS:
        close = difflib.get_close_matches(scenario, SCENARIOS, n=1, cutoff=0.5)
        hint = f"did you mean {PREFIX}{close[0]}?" if close else f"choose one of {', '.join(SCENARIOS)}."
        raise ConfigError(f"unknown gfootball scenario {scenario!r} in --env {env_id!r}; {hint}")
    if representation not in REPRESENTATIONS:
        raise ConfigError(f"unknown --football-representation {representation!r}; choose "
                          f"{' or '.join(REPRESENTATIONS)}.")
    if rewards not in REWARDS:
        raise ConfigError(f"unknown --football-rewards {rewards!r}; choose {' or '.join(REWARDS)}.")
    if players > (team := LEFT_TEAM_SIZES[scenario]):
        raise ConfigError(f"--football-players {players} is more than the {team} players of {scenario}'s "
                          f"left team (its goalkeeper included); choose at most {team}.")
    return FootballSpec(scenario, representation, rewards, players)


def import_gfootball() -> Any:
    """`gfootball.env`, imported without gym 0.25.2's notices (we pin that gym on purpose) and without
    letting old gym install its global `simplefilter("once", DeprecationWarning)` in the user's process."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        import gfootball.env
    return gfootball.env


def require_gfootball() -> None:
    """Raise ConfigError, in one sentence, when gfootball (or the gym it needs) cannot be imported."""
    try:
        import_gfootball()
    except Exception as exc:
        raise ConfigError(f"--env gfootball/... needs Google Research Football, which cannot be imported "
                          f"here ({type(exc).__name__}: {exc}); {INSTALL_HINT}.") from None


class FootballEnv(gym.Env):
    """One gfootball game, render=False, gymnasium API: single agent (the left team's active player), or
    with `players` > 1 the game of a FootballTeam, whose observations, actions and rewards have a leading
    axis of one entry per controlled player (gfootball's own layout)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, spec: FootballSpec) -> None:
        self.football = spec
        football_env = import_gfootball()
        with warnings.catch_warnings():  # old gym's notes on its own old step API: that is why we adapt
            warnings.simplefilter("ignore", DeprecationWarning)
            self._env = football_env.create_environment(
                env_name=spec.scenario, representation=spec.representation,
                stacked=spec.representation == "extracted", rewards=spec.rewards, render=False,
                write_goal_dumps=False, write_full_episode_dumps=False, write_video=False, logdir="",
                number_of_left_players_agent_controls=spec.players)
        self._config = self._env.unwrapped._config
        self._started = False
        self.players = spec.players
        team = (spec.players,) if spec.players > 1 else ()
        self.action_space = (gym.spaces.MultiDiscrete(self._env.action_space.nvec) if team
                             else gym.spaces.Discrete(int(self._env.action_space.n)))
        player_shape = self._env.observation_space.shape[len(team):]
        if spec.representation == "extracted":
            height, width, channels = player_shape
            self.observation_space = gym.spaces.Box(0, 255, (*team, channels, height, width), np.uint8)
        else:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (*team, *player_shape), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # Unseeded resets continue this env's own generator, so they do not replay the last seed.
        if seed is not None:
            engine_seed = seed % MAX_ENGINE_SEED
        else:
            engine_seed = int(self.np_random.integers(MAX_ENGINE_SEED))
        # Read by gfootball's scenario builder at the next reset; both kept in the config's base values,
        # so every episode uses what we set rather than a draw from Python's global `random`.
        self._config["game_engine_random_seed"] = engine_seed
        self._config["reverse_team_processing"] = bool(engine_seed % 2)
        self._started = True
        return self._convert(self._env.reset()), {}

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        """`action`: an int, or one per controlled player; the reward likewise."""
        played = [int(a) for a in action] if self.players > 1 else int(action)
        obs, reward, done, info = self._env.step(played)
        reward = np.asarray(reward, np.float32).reshape(self.players) if self.players > 1 else float(reward)
        # Every gfootball episode end (a goal, a lost ball, the scenario's time limit) is part of the
        # task as the paper trains it, so it is a termination, not a truncation.
        return self._convert(obs), reward, bool(done), False, info

    def get_state(self) -> dict[str, Any]:
        """The game mid-episode (engine, checkpoint rewards, frame stack) and this adapter's generator,
        so a checkpoint resumes the game exactly (htsrl_aio.backends.env_state)."""
        return {"game": self._env.get_state(), "step_count": self._core._step_count,
                "np_random": self.np_random.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        if not self._started:  # gfootball restores only into a game that has been reset
            self.reset()
        self._env.set_state(state["game"])
        # Not in gfootball's snapshot, yet its step() acts on it: on the first step of an episode it
        # opens a dump, which crashes if that step also ends the episode.
        self._core._step_count = state["step_count"]
        self.np_random.bit_generator.state = state["np_random"]

    @property
    def _core(self) -> Any:
        return self._env.unwrapped._env  # gfootball's FootballEnvCore: the engine and its bookkeeping

    def close(self) -> None:
        self._env.close()

    def _convert(self, obs: np.ndarray) -> np.ndarray:
        if self.football.representation == "extracted":  # HWC -> CHW, of each player's map
            return np.ascontiguousarray(np.moveaxis(np.asarray(obs), -1, -3), dtype=np.uint8)
        return np.asarray(obs, dtype=np.float32)


class FootballTeam:
    """`--football-players N`: one gfootball game whose left team's N controlled players are the agents
    (`left_0` ... `left_{N-1}`, gfootball's order) of a PettingZoo ParallelEnv, so they are N rows of one
    shared policy (docs: README "Multi-agent"). Each sees its own observation (simple115v2 marks the
    player it is; extracted is the team's map with its own position) and gets its own reward (the same
    goal for all; the checkpoint reward per player); a goal, a lost ball or the time limit ends the
    episode for all of them."""

    metadata: ClassVar[dict[str, Any]] = {"name": "gfootball_team", "render_modes": []}

    def __init__(self, spec: FootballSpec) -> None:
        self.game = FootballEnv(spec)
        self.possible_agents = [f"left_{i}" for i in range(spec.players)]
        self.agents: list[str] = []
        team_obs = self.game.observation_space
        self._obs_space = gym.spaces.Box(team_obs.low[0], team_obs.high[0], team_obs.shape[1:],
                                         team_obs.dtype)
        self._action_space = gym.spaces.Discrete(int(self.game.action_space.nvec[0]))

    def observation_space(self, agent: str) -> gym.spaces.Box:
        return self._obs_space

    def action_space(self, agent: str) -> gym.spaces.Discrete:
        return self._action_space

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        obs, _ = self.game.reset(seed=seed)
        self.agents = list(self.possible_agents)
        return self._by_agent(obs), {agent: {} for agent in self.agents}

    def step(self, actions: dict[str, int]) -> tuple[dict, dict, dict, dict, dict]:
        obs, rewards, done, _, _ = self.game.step([actions[agent] for agent in self.possible_agents])
        playing = self.possible_agents
        self.agents = [] if done else list(playing)
        return (self._by_agent(obs), {agent: float(r) for agent, r in zip(playing, rewards)},
                dict.fromkeys(playing, done), dict.fromkeys(playing, False), {agent: {} for agent in playing})

    def get_state(self) -> dict[str, Any]:
        return {"game": self.game.get_state(), "agents": list(self.agents)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.game.set_state(state["game"])
        self.agents = list(state["agents"])

    def close(self) -> None:
        self.game.close()

    @property
    def unwrapped(self) -> FootballTeam:
        return self

    def _by_agent(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {agent: obs[i] for i, agent in enumerate(self.possible_agents)}
