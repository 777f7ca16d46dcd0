"""Multi-agent envs (PettingZoo's Parallel API): each agent a row of the storage, one shared policy,
the same bits whatever the workers, batching or backend."""

import asyncio
import copy
import functools
import json
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from harness import (
    HANG_S,
    PLACEMENTS,
    actions_trace,
    as_if_crashed_after,
    metrics_rows,
    same_bits_in_every_placement,
    signalled,
    vector_spec,
)

from htsrl_aio import ConfigError, TrainConfig, Trainer, resume, train, train_async
from htsrl_aio.backends.agent_group import Absent, AgentGroup, AgentSlot, Joined, Left, Parked
from htsrl_aio.backends.hosted import HostedBackend
from htsrl_aio.backends.replica import Replica
from htsrl_aio.cli import main as cli_main
from htsrl_aio.distributions import make_distribution
from htsrl_aio.envs import check_env, resolve_env
from htsrl_aio.envs.factory import EnvSpec
from htsrl_aio.envs.parallel import MultiAgentError
from htsrl_aio.evaluate import evaluate, load_policy
from htsrl_aio.export import export_policy
from htsrl_aio.models import ActorCritic, build_model
from htsrl_aio.models.normalize import ReturnScaler
from htsrl_aio.runtime.learner import Learner
from htsrl_aio.runtime.storage import RolloutStorage, storage_layout
from htsrl_aio.steps import StepResult

pytest.importorskip("pettingzoo")

ROOT = Path(__file__).parent.parent
NUM_ENVS, ROLLOUT, UPDATES = 4, 16, 3
MEETING = "envs_for_tests:meeting_agents"
SIMPLE_SPREAD = "mpe2.simple_spread_v3:parallel_env"
LEAVING = {"leaving": 0.15}  # the meeting env's agents leave at seeded random steps
# ... and agent_2 starts outside the episode and joins it at a seeded random step, and agent_0 leaves after
# step 2 and comes back after step 4 (PettingZoo's parallel_api_test calls that a revival and refuses it).
JOINING = {"leaving": 0.15, "late": 1, "returns": True}
STATE = {"state": True}  # the meeting env has a state(): its agents' positions, not their observations' noise


def config(run_dir: Path, env: str = MEETING, **overrides) -> TrainConfig:
    base = {"env": env, "num_envs": NUM_ENVS, "rollout": ROLLOUT, "total_steps": NUM_ENVS * ROLLOUT * UPDATES,
            "minibatches": 2, "logdir": str(run_dir), "progress": False}
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("env", [MEETING, SIMPLE_SPREAD])
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_same_bits_across_workers_batching_and_backends(tmp_path, no_leaks, env, mode):
    """Rows of one env step together (on one worker), and which agent's action arrived first changes
    nothing: the meeting env's steps take a random time."""
    if env == SIMPLE_SPREAD:
        pytest.importorskip("mpe2")
    same_bits_in_every_placement(functools.partial(config, env=env, mode=mode), tmp_path, UPDATES)


def test_agents_are_rows_and_metrics_count_env_steps(tmp_path, no_leaks):
    summary = train(config(tmp_path / "run", workers=2, agent_id=True))
    rows = metrics_rows(tmp_path / "run")
    assert [row["global_step"] for row in rows] == [NUM_ENVS * ROLLOUT * u for u in range(1, UPDATES + 1)]
    assert [row["agent_steps"] for row in rows] == [3 * NUM_ENVS * ROLLOUT * u for u in range(1, UPDATES + 1)]
    last = rows[-1]
    # The meeting env's episodes end for its 3 agents at once: a team's return sums its agents'.
    assert last["team_return_mean"] == pytest.approx(3 * last["episode_return_mean"], rel=0.2)
    assert summary["final_params_sha256"]


def test_team_return_is_the_sum_over_an_envs_agents():
    from htsrl_aio.runtime.scheduler import Teams

    # (step, row, return, length): env 0 is rows 0-1, env 1 rows 2-3 (2 agents each).
    episodes = [(3, 0, 1.0, 4), (3, 1, 2.0, 4), (3, 2, 10.0, 4), (3, 3, 20.0, 4),
                (7, 0, 5.0, 4), (7, 1, 6.0, 4)]
    assert Teams(2, []).add(episodes) == [3.0, 30.0, 11.0]


def test_a_team_whose_agent_left_a_rollout_earlier_completes_in_the_next():
    from htsrl_aio.runtime.scheduler import Teams

    teams = Teams(2, [])
    assert teams.add([(2, 3, 4.0, 3)]) == []  # env 1's agent 1 left at step 2
    saved = teams.state()
    assert saved == [(1, 4.0, 1)]
    assert Teams(2, saved).add([(0, 2, 1.5, 9)]) == [5.5]  # ... as a checkpoint restores it


def test_rows_of_one_env_stay_on_one_host():
    spec = _spec(MEETING)
    args = type("Args", (), {"spec": spec, "num_envs": 5 * 3})()
    host = HostedBackend.__new__(HostedBackend)
    host.args = args
    host._split(3)
    assert host._slices == [tuple(range(0, 6)), tuple(range(6, 12)), tuple(range(12, 15))]


def test_the_group_steps_once_every_agent_has_acted_whatever_the_order():
    factory = resolve_env(MEETING)
    spec = _spec(MEETING)
    results = {}
    for order in ([0, 1, 2], [2, 0, 1]):
        group = AgentGroup(factory, spec, Parked)
        resets = [group.reset(i, seed=7) for i in range(3)]
        assert all(r.done() for r in resets)
        waiters = {}
        for i in order:
            waiters[i] = group.step(i, np.int64(i))
            assert all(w.done() for w in waiters.values()) == (len(waiters) == 3)
        results[tuple(order)] = [(w._result[0].tolist(), w._result[1]) for _, w in sorted(waiters.items())]
    first, second = results.values()
    assert first == second


async def test_check_env_checks_a_parallel_env_in_full():
    report = await check_env(resolve_env(SIMPLE_SPREAD), steps=50, isolated=True)
    assert report.ok, report.problems
    assert report.spec is not None and report.spec.agents == ("agent_0", "agent_1", "agent_2")
    assert report.spec.describe() == "3 agents, each with observations (18,) float32, 5 actions"


def test_agent_id_is_an_observation_key_of_its_own():
    spec = _spec(MEETING, agent_id=True)
    assert spec.obs.keys == ("agent_id", "obs")
    group = AgentGroup(resolve_env(MEETING, TrainConfig(env=MEETING, agent_id=True)), spec, Parked)
    obs, _ = [group.reset(i, seed=1) for i in range(3)][2]._result
    assert obs["agent_id"].tolist() == [0.0, 0.0, 1.0]


def test_an_env_that_pickles_as_its_constructor_is_not_saved():
    """MPE's raw env is an EzPickle, under PettingZoo's wrappers: a pickled copy would be a fresh env."""
    pytest.importorskip("mpe2")
    from htsrl_aio.backends import env_state

    assert env_state.capture(resolve_env(SIMPLE_SPREAD)()) is None
    assert env_state.capture(resolve_env(MEETING)()) is not None


async def test_an_aec_env_is_converted_where_pettingzoo_says_it_can_be():
    pytest.importorskip("mpe2")
    report = await check_env(resolve_env("mpe2.simple_spread_v3:env"), steps=20)
    assert report.ok and report.spec is not None and len(report.spec.agents) == 3


@pytest.mark.parametrize(("env", "kwargs", "sentence"), [
    (MEETING, {"fault": "different_spaces"},
     "agents 'agent_0' and 'agent_2' have different observation or action spaces, and htsrl-aio trains one "
     "policy shared by every agent; pad them to one space with SuperSuit's pad_observations_v0 and "
     "pad_action_space_v0."),
    (MEETING, {"fault": "stranger"},
     "env.agents holds ['stranger_0'], which are not in possible_agents ['agent_0', 'agent_1', 'agent_2']; "
     "each agent has a fixed row, so possible_agents must list every agent that can ever take part."),
    (MEETING, {"fault": "unseen"},
     "agents ['agent_0'] are in env.agents after step() but it returned no observation for them; return "
     "the first observation of an agent in the reset or step after which it takes part."),
    ("pettingzoo.classic.tictactoe_v3:env", {},
     "tictactoe_v3 is a PettingZoo AEC env whose agents take turns (its metadata does not say "
     "is_parallelizable), so it cannot be stepped as a ParallelEnv; give a factory of its parallel_env, or "
     "of an env whose agents act at the same time."),
])
async def test_what_this_cut_cannot_train_is_one_sentence(env, kwargs, sentence):
    report = await check_env(resolve_env(env, TrainConfig(env=env, env_kwargs=kwargs)), steps=20)
    assert report.problems[0].endswith(sentence), report.problems


async def test_frame_options_are_refused_for_a_multi_agent_env():
    report = await check_env(resolve_env(MEETING, TrainConfig(env=MEETING, frame_stack=2)), steps=1)
    assert report.problems == [
        "--frame-size, --grayscale and --frame-stack do not apply to multi-agent envs yet; drop them "
        "(SuperSuit's resize_v1, color_reduction_v0 and frame_stack_v1 do the same inside your factory)."]


def test_a_run_refuses_what_it_does_not_do_yet(tmp_path):
    with pytest.raises(ConfigError, match=r"runs envs in a C\+\+ vector engine, which .* is not"):
        train(config(tmp_path / "engine", env_backend="engine"))
    with pytest.raises(ConfigError, match="--agent-id applies to multi-agent envs"):
        train(config(tmp_path / "single", env="CartPole-v1", agent_id=True))


async def test_check_env_passes_an_env_whose_agents_leave():
    report = await check_env(resolve_env(MEETING, TrainConfig(env=MEETING, env_kwargs=LEAVING)), steps=60)
    assert report.ok, report.problems


async def test_check_env_passes_an_env_whose_agents_join_late():
    """PettingZoo's own parallel_api_test included: an agent that first joins after the reset is valid."""
    kwargs = {"leaving": 0.15, "late": 1}
    report = await check_env(resolve_env(MEETING, TrainConfig(env=MEETING, env_kwargs=kwargs)), steps=60)
    assert report.ok, report.problems


def test_an_agent_is_absent_until_the_step_it_joins_at_which_its_row_gets_its_first_observation():
    group = AgentGroup(resolve_env(MEETING, TrainConfig(env=MEETING, env_kwargs={"late": 1})),
                       _spec(MEETING), Parked)
    resets = [group.reset(i, seed=5)._result for i in range(3)]
    assert resets[2] == Absent(ended=False) and not isinstance(resets[0], Absent)
    joins_after = group.env._joins["agent_2"]
    for step in range(1, joins_after + 1):
        results = [group.step(i, np.int64(1))._result for i in range(3)]
        assert not any(isinstance(r, (Absent, Joined)) for r in results[:2])
        if step < joins_after:
            assert results[2] == Absent(ended=False)
    assert isinstance(results[2], Joined) and results[2].obs.shape == (3,)
    results = [group.step(i, np.int64(1))._result for i in range(3)]
    assert isinstance(results[2], tuple) and len(results[2]) == 5  # its first transition


def test_an_agent_that_comes_back_after_it_left_starts_a_new_episode_of_its_row():
    spec = _spec(MEETING)
    factory = resolve_env(MEETING, TrainConfig(env=MEETING, env_kwargs={"returns": True}))
    group = AgentGroup(factory, spec, Parked)
    replica = Replica(0, lambda: AgentSlot(group, 0), spec.obs, spec.action, run_seed=1)
    others = [AgentSlot(group, i) for i in (1, 2)]
    slots = [{"obs": np.full(3, 7.0, np.float32)} for _ in range(3)]

    def step(action: int) -> StepResult:
        work = replica.step(np.int64(action), *slots)
        parked = work.send(None)
        [slot.step(np.int64(1)) for slot in others]
        assert parked.done()
        with pytest.raises(StopIteration) as done:
            work.send(None)
        return done.value.value

    reset_all(replica.reset(slots[0]), others)
    first = [step(1) for _ in range(2)]
    assert first[1].terminated and first[1].episode == (pytest.approx(first[0].reward + first[1].reward), 2)
    assert not step(1).active  # step 3: agent_0 is out
    back = step(1)  # step 4: it comes back with its first observation, which is no transition of it
    assert not back.active and back.episode is None and not np.array_equal(slots[1]["obs"], np.full(3, 7.0))
    again = step(1)
    assert again.active and replica.tracker.episode_length == 1  # counted afresh


def reset_all(reset, others) -> None:
    parked = reset.send(None)
    [slot.reset(seed=0) for slot in others]
    assert parked.done()
    with pytest.raises(StopIteration):
        reset.send(None)


def test_an_env_that_raises_is_built_again_and_its_lost_step_is_no_transition_of_an_absent_agent():
    """agent_0 leaves after step 2; the env raises at step 3: agent_0's row gets an inactive lost step,
    the others a truncation at the observation they acted on; the new env then resets every row."""
    spec = _spec(MEETING)
    factory = resolve_env(MEETING, TrainConfig(env=MEETING, env_kwargs={"returns": True, "fails_at": 3}))
    group = AgentGroup(factory, spec, Parked)
    replicas = [Replica(i, functools.partial(AgentSlot, group, i), spec.obs, spec.action, run_seed=1,
                        restart_on_error=True) for i in range(3)]
    slots = [[{"obs": np.full(3, 7.0, np.float32)} for _ in range(3)] for _ in replicas]
    together([r.reset(s[0]) for r, s in zip(replicas, slots)])
    first_env = group.env
    for _ in range(2):
        results = together([r.step(np.int64(1), *s) for r, s in zip(replicas, slots)])
    assert results[0].terminated and replicas[0].waits and results[0].waits
    lost = together([r.step(np.int64(1), *s) for r, s in zip(replicas, slots)])
    assert group.env is not first_env  # built once, for all three rows
    assert lost[0].restarted is not None and not lost[0].active and not lost[0].truncated
    assert all(r.restarted is not None and r.active and r.truncated and r.reward == 0.0 for r in lost[1:])
    assert np.array_equal(slots[1][2]["obs"], slots[1][0]["obs"])  # the bootstrap: what it acted on
    assert not any(r.waits for r in replicas) and group.env.agents == group.env.possible_agents


def together(coroutines: list) -> list:
    """Run the coroutines of one env's rows, each parked until the others have asked (as a worker does)."""
    results, pending = {}, dict(enumerate(coroutines))
    for _ in range(100):  # a handful of rounds: every row asks, the env answers them all
        for i, coroutine in list(pending.items()):
            try:
                coroutine.send(None)
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
        if not pending:
            return [results[i] for i in range(len(coroutines))]
    raise AssertionError("the rows never got their answers")


def test_agents_that_join_and_leave_train_and_count_only_their_own_steps(tmp_path, no_leaks):
    train(config(tmp_path / "run", env_kwargs=JOINING, workers=1))
    rows = metrics_rows(tmp_path / "run")
    assert 0 < rows[-1]["agent_steps"] < 3 * NUM_ENVS * ROLLOUT * UPDATES
    assert rows[-1]["episode_return_mean"] is not None


def test_a_rows_state_starts_empty_after_its_agents_absence():
    """The step after an absent one may begin the env's next episode (every row resets with it): its
    state is zeroed, whatever was carried through the absent steps."""
    spec = vector_spec(gym.spaces.Discrete(2))
    storage = RolloutStorage.zeros(0, storage_layout(2, 4, spec.obs.arrays(), spec.action.shape,
                                                     spec.action.dtype, state_size=3, agents=True))
    storage.record_step(0, 0, StepResult(0.0, False, False, None))
    storage.record_step(0, 1, StepResult(0.0, False, False, None, active=False))
    assert storage.episode_starts[1].tolist() == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_memory_with_agents_that_leave_and_join_trains_the_same_bits_everywhere(tmp_path, no_leaks, mode):
    same_bits_in_every_placement(functools.partial(config, env_kwargs=JOINING, mode=mode, memory="gru",
                                                   memory_size=8, bptt=8), tmp_path, UPDATES)

def test_the_row_of_an_agent_that_left_steps_nothing_until_the_episode_ends():
    group = AgentGroup(resolve_env(MEETING, TrainConfig(env=MEETING, env_kwargs={"returns": True})),
                       _spec(MEETING), Parked)
    [group.reset(i, seed=5) for i in range(3)]
    for _ in range(2):
        steps = [group.step(i, np.int64(1)) for i in range(3)]
    first, *others = (w._result for w in steps)
    assert isinstance(first, Left) and first.step[2]  # agent_0 terminated at step 2 and left
    assert not any(isinstance(r, (Left, Absent)) for r in others)
    steps = [group.step(i, np.int64(1)) for i in range(3)]  # step 3: the env is not asked for agent_0
    assert steps[0]._result == Absent(ended=False) and not isinstance(steps[1]._result, Absent)


def test_an_agent_that_leaves_without_ending_its_episode_is_one_sentence():
    group = AgentGroup(resolve_env(MEETING, TrainConfig(env=MEETING, env_kwargs={"fault": "vanishes"})),
                       _spec(MEETING), Parked)
    [group.reset(i, seed=5) for i in range(3)]
    [group.step(i, np.int64(1)) for i in range(3)]
    steps = [group.step(i, np.int64(1)) for i in range(3)]
    with pytest.raises(MultiAgentError, match="without terminating or truncating; a ParallelEnv sets "):
        steps[0].__await__().send(None)


@pytest.mark.parametrize("memory", ["none", "gru"])
@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_an_inactive_row_contributes_nothing_to_the_update(algo, memory):
    """Whatever an inactive step holds, the update (with both normalisations on) is the same, bit for bit;
    with --memory the sequences run through the absent steps, and the losses leave them out."""
    cfg = TrainConfig(algo=algo, num_envs=3, rollout=6, total_steps=18, minibatches=2, normalize_obs=True,
                      normalize_reward=True, memory=memory, memory_size=4,
                      bptt=3 if memory != "none" else 0).resolved()
    spec = vector_spec(gym.spaces.Discrete(2))
    torch.manual_seed(0)
    model = ActorCritic(spec.obs, make_distribution(spec.action), (8,), normalize_obs=True,
                        return_scaler=ReturnScaler(3, cfg.gamma), memory=memory, memory_size=4)
    results = []
    for wild in (False, True):
        learner = Learner(cfg.learner_settings(), copy.deepcopy(model), copy.deepcopy(model),
                          make_distribution(spec.action))
        stats = learner.update(_leaving_storage(spec, wild, model.state_size))
        results.append(([p.detach().clone() for p in learner.model.state_dict().values()], stats))
    (first, first_stats), (second, second_stats) = results
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first_stats == second_stats


def _leaving_storage(spec, wild: bool, state_size: int = 0):
    """3 rows, 6 steps: row 1's agent terminates at step 2 and is absent from step 3 on; `wild` puts
    huge, different numbers in every slot of its absent steps (the states carried through them too)."""
    rng = np.random.default_rng(0)
    storage = RolloutStorage.zeros(0, storage_layout(3, 6, spec.obs.arrays(), spec.action.shape,
                                                     spec.action.dtype, state_size, agents=True))
    if state_size:
        storage.memory[:] = rng.standard_normal(storage.memory.shape)
        storage.episode_starts[3:, 1] = True  # as collection writes them after each absent step
        if wild:
            storage.memory[3:, 1] = 1e6
    storage.obs["obs"][:] = rng.standard_normal((7, 3, 4))
    storage.actions[:] = rng.integers(0, 2, (6, 3))
    storage.logprobs[:] = -rng.random((6, 3))
    storage.values[:] = rng.standard_normal((6, 3))
    storage.rewards[:] = rng.standard_normal((6, 3))
    storage.terminated[2, 1] = True
    storage.row_active[:] = True
    storage.row_active[3:, 1] = False
    if wild:
        absent = (slice(3, 6), 1)
        storage.obs["obs"][3:6, 1] = 1e6 * rng.standard_normal((3, 4))
        storage.actions[absent] = 1 - storage.actions[absent]
        storage.logprobs[absent] = -50.0
        storage.values[absent] = 1e6
        storage.rewards[absent] = -1e6
        storage.truncated[absent] = True
        storage.bootstrap_values[absent] = 1e6
    return storage


@pytest.mark.slow
@pytest.mark.parametrize("env_kwargs", [LEAVING, JOINING], ids=["leaving", "joining"])
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_agents_that_leave_or_join_train_the_same_bits_everywhere(tmp_path, no_leaks, mode, env_kwargs):
    """Agents leave (and join) at seeded random steps of steps that take a random time: the same bits
    whatever the workers, batching or backend, and the metrics count only the agents' own transitions."""
    summary = same_bits_in_every_placement(
        functools.partial(config, env_kwargs=env_kwargs, mode=mode, normalize_obs=True,
                          normalize_reward=True),
        tmp_path, UPDATES)
    assert summary["final_params_sha256"]
    rows = metrics_rows(tmp_path / "one_worker")
    assert 0 < rows[-1]["agent_steps"] < 3 * NUM_ENVS * ROLLOUT * UPDATES  # agents left
    assert rows[-1]["team_return_mean"] is not None


@pytest.mark.slow
def test_resume_with_agents_that_leave_and_join_is_bit_identical_and_evaluates(tmp_path, no_leaks):
    """The env's state says which agents are in its episode; a team still playing is checkpointed."""
    _resumed_run_matches(tmp_path, ("agent_steps", "team_return_mean", "episode_return_mean"),
                         env_kwargs=JOINING)
    # Eval plays every agent in the episode, those that join included, until the episode ends.
    played = asyncio.run(evaluate(tmp_path / "full", episodes=3, deterministic=True))
    assert all(1 <= length <= 14 for length in played.lengths)


def test_the_lost_step_of_a_row_whose_agent_was_out_says_so_to_the_new_host():
    """A host that died took the replica that knew the row's agent was out: the head node, which saw
    the row's last StepResult, marks its lost step absent."""
    from types import SimpleNamespace

    from htsrl_aio.backends.worker import Command

    host = HostedBackend.__new__(HostedBackend)
    host.args = SimpleNamespace(env_timeout=None)
    host._loop = SimpleNamespace(call_soon=lambda callback: None)
    host._commands, host._pending, host._sent_at, host._outbox = {}, {}, {}, {}
    host._stale, host._waiting = {}, set()
    for env_id, waits in ((0, True), (1, False)):
        host._commands[env_id] = Command("step", env_id)
        host._resolve(env_id, StepResult(0.0, False, False, None, active=not waits, waits=waits))
        host._commands[env_id] = Command("step", env_id)
        host._stale[env_id] = ("host died", "")
        host._forward(0, env_id)
    assert [(cmd.kind, cmd.absent) for cmd in host._outbox[0]] == [("lost_step", True), ("lost_step", False)]


def test_a_multi_agent_env_that_raises_is_built_again_and_the_run_goes_on(tmp_path, no_leaks):
    """Each env raises at its 20th step and its successor at its own 20th: 2 failures x 4 envs x 3 rows
    (restarts count rows, as every count of the runtime does)."""
    summary = train(config(tmp_path / "run", on_env_error="restart", workers=2,
                           env_kwargs={**LEAVING, "fails_at": 20}))
    assert summary["updates"] == UPDATES
    assert metrics_rows(tmp_path / "run")[-1]["env_restarts"] == 2 * NUM_ENVS * 3


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_restarts_of_a_multi_agent_env_train_the_same_bits_everywhere(tmp_path, no_leaks, mode):
    same_bits_in_every_placement(functools.partial(
        config, mode=mode, on_env_error="restart", env_kwargs={**JOINING, "fails_at": 20}), tmp_path, UPDATES)


@pytest.mark.slow
def test_a_dead_worker_of_a_multi_agent_env_is_spawned_again(tmp_path, monkeypatch, no_leaks):
    monkeypatch.setenv("HTSRL_TEST_DEATH_MARKER", str(tmp_path / "died"))
    summary = train(config(tmp_path / "run", on_env_error="restart", workers=2,
                           env_kwargs={**LEAVING, "dies_at": 25}))
    assert summary["updates"] == UPDATES
    # The worker hosted 2 of the 4 envs: their 6 rows start again.
    assert metrics_rows(tmp_path / "run")[-1]["env_restarts"] == 6
    assert "died (exit code 9); started again" in (tmp_path / "run" / "error.log").read_text()


@pytest.mark.slow
def test_the_cli_trains_simple_spread(tmp_path):
    pytest.importorskip("mpe2")
    done = subprocess.run([sys.executable, "-m", "htsrl_aio", "train", "--env", SIMPLE_SPREAD,
                           "--num-envs", "2", "--rollout", "8", "--total-steps", "32", "--minibatches", "2",
                           "--workers", "1",
                           "--logdir", str(tmp_path / "run"), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert metrics_rows(tmp_path / "run")[-1]["agent_steps"] == 3 * 32


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_resume_from_a_periodic_checkpoint_is_bit_identical(tmp_path, no_leaks, mode):
    """The env's state travels with its first agent's row; every row's tracker with its own."""
    _resumed_run_matches(tmp_path, ("team_return_mean",), mode=mode)


def _resumed_run_matches(tmp_path, metrics: tuple[str, ...], resumed_on: dict | None = None,
                         **settings) -> None:
    """A run resumed from its update-2 checkpoint (in other placements: `resumed_on`, one worker and the
    learner thread by default) ends as the run never stopped: parameters, actions, restored envs and the
    last row's `metrics`."""
    full = train(config(tmp_path / "full", checkpoint_every=2, total_steps=NUM_ENVS * ROLLOUT * 5, workers=2,
                        **settings))
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    resumed = resume(crashed / "checkpoints" / "update-0000002.pt",
                     **(resumed_on or {"workers": 1, "learner": "thread"}))
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert actions_trace(crashed) == actions_trace(tmp_path / "full")
    rows, full_rows = metrics_rows(crashed), metrics_rows(tmp_path / "full")
    assert rows[2]["resume_envs"] == "restored"
    for key in metrics:
        assert rows[-1][key] == full_rows[-1][key], key


@pytest.mark.slow
def test_sigterm_stops_at_a_swap_and_the_resumed_run_is_bit_identical(tmp_path):
    settings = {"env": MEETING, "num_envs": NUM_ENVS, "rollout": ROLLOUT,
                "total_steps": NUM_ENVS * ROLLOUT * 30, "minibatches": 2, "workers": 2,
                "stop_timeout": HANG_S}
    full = train(TrainConfig(**settings, logdir=str(tmp_path / "full"), progress=False))
    run = tmp_path / "stopped"
    argv = [sys.executable, "-m", "htsrl_aio.cli", "train", "--env", MEETING, "--num-envs", str(NUM_ENVS),
            "--rollout", str(ROLLOUT), "--total-steps", str(settings["total_steps"]), "--minibatches", "2",
            "--workers", "2", "--stop-timeout", str(HANG_S), "--logdir", str(run), "--no-progress"]
    code, stderr = signalled(argv, run, signal.SIGTERM)
    assert code == 143, stderr
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)
    assert stopped["kind"] == "swap" and 0 < stopped["update"] < full["updates"], "the signal came too late"
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert actions_trace(run) == actions_trace(tmp_path / "full")


@pytest.mark.slow
async def test_act_takes_agents_observations_and_eval_reports_the_mean_agent_return(tmp_path, no_leaks):
    env = MEETING.replace("meeting_agents", "MeetingAgents")
    observations, _ = resolve_env(env)().reset(seed=3)
    async with Trainer(config(tmp_path / "run", agent_id=True, workers=1)) as trainer:
        async for _ in trainer.updates():
            actions = await trainer.act(observations, deterministic=True)
            assert set(actions) == set(observations) and all(a in (0, 1, 2) for a in actions.values())
            assert await trainer.act({"agent_1": observations["agent_1"]}, deterministic=True) == \
                {"agent_1": actions["agent_1"]}
            with pytest.raises(ValueError, match="takes a dict of observations by agent"):
                await trainer.act(observations["agent_0"])
            with pytest.raises(ValueError, match="takes memory as a dict by agent"):
                await trainer.act(observations, memory=trainer.new_memory())
    first = await evaluate(tmp_path / "run", episodes=3, deterministic=True)
    assert first.returns == (await evaluate(tmp_path / "run", episodes=3, deterministic=True)).returns
    assert all(8 <= length <= 14 for length in first.lengths)  # the meeting env's episodes
    sampled = await evaluate(tmp_path / "run", episodes=3)
    assert len(sampled.returns) == 3
    with pytest.raises(ConfigError, match="cannot render them"):  # the meeting env has no render modes
        await evaluate(tmp_path / "run", episodes=1, video=tmp_path / "video.mp4")


@pytest.mark.slow
async def test_eval_writes_a_video_of_every_step_of_a_multi_agent_env(tmp_path, no_leaks):
    """PettingZoo's render_mode="rgb_array", asked of the factory eval builds again: one frame per step."""
    pytest.importorskip("mpe2")
    imageio = pytest.importorskip("imageio.v2")
    await train_async(config(tmp_path / "run", env=SIMPLE_SPREAD, workers=1))
    video = tmp_path / "agents.mp4"
    result = await evaluate(tmp_path / "run", episodes=2, video=video)
    reader = imageio.get_reader(str(video))
    assert sum(1 for _ in reader) == sum(result.lengths) == 2 * 25  # simple_spread's max_cycles
    assert reader.get_meta_data()["size"] == (700, 700)  # simple_spread's rgb_array render


# --critic global (MAPPO): the critic reads the env's global state, the actor the agent's own observation.


@pytest.mark.slow
@pytest.mark.parametrize(("env", "settings"), [
    (MEETING, {"env_kwargs": LEAVING, "normalize_obs": True, "agent_id": True}),  # observations concatenated
    (MEETING, {"env_kwargs": STATE, "mode": "sync", "algo": "a2c", "memory": "gru", "memory_size": 8}),
    (SIMPLE_SPREAD, {"normalize_obs": True}),  # MPE's state()
])
def test_a_global_critic_trains_the_same_bits_everywhere(tmp_path, no_leaks, env, settings):
    if env == SIMPLE_SPREAD:
        pytest.importorskip("mpe2")
    same_bits_in_every_placement(functools.partial(config, env=env, critic="global", **settings), tmp_path,
                                 UPDATES)


def test_the_critic_reads_the_env_state_and_the_actor_never_does():
    cfg = TrainConfig(env=MEETING, env_kwargs=STATE, critic="global", hidden=(16,)).resolved()
    spec = EnvSpec.of_parallel_env(resolve_env(MEETING, cfg)(), global_state=True)
    assert spec.obs.keys == ("obs", "global_state") and spec.policy_obs.keys == ("obs",)
    model = build_model(spec, cfg)
    generator = torch.Generator().manual_seed(0)
    obs = {key: torch.randn(5, 3, generator=generator) for key in spec.obs.keys}
    params, value = model(obs)
    own_changed, state_changed = ({**obs, key: obs[key] + 1.0} for key in ("obs", "global_state"))
    assert torch.equal(model(own_changed)[1], value) and not torch.equal(model(own_changed)[0], params)
    assert torch.equal(model(state_changed)[0], params) and not torch.equal(model(state_changed)[1], value)
    assert torch.equal(model.value(obs), value)
    assert torch.equal(model.act({"obs": obs["obs"]})[0], params)  # acting needs no state


@pytest.mark.parametrize("env_kwargs", [STATE, {}])
def test_every_row_of_an_env_carries_its_state_at_that_step(env_kwargs):
    """The env's state() where it has one, else its agents' observations concatenated; at the step that
    ends an episode by its time limit too (the bootstrap value is taken from it)."""
    cfg = TrainConfig(env=MEETING, env_kwargs=env_kwargs, critic="global")
    factory = resolve_env(MEETING, cfg)
    group = AgentGroup(factory, EnvSpec.of_parallel_env(factory(), global_state=True), Parked)
    rows = [w._result[0] for w in [group.reset(i, seed=4) for i in range(3)]]
    while True:
        expected = group.env.state() if env_kwargs else np.concatenate([own for own, _ in rows])
        assert all(np.array_equal(state, expected) for _, state in rows)
        results = [w._result for w in [group.step(i, np.int64(i)) for i in range(3)]]  # they move apart
        rows = [r[0] for r in results]
        if not group.env.agents:
            break
    assert all(r[3] for r in results)  # the last step truncated every agent: its rows carry its state
    expected = group.env.state() if env_kwargs else np.concatenate([own for own, _ in rows])
    assert all(np.array_equal(state, expected) for _, state in rows)


async def test_check_env_says_what_the_global_critic_reads():
    pytest.importorskip("mpe2")
    report = await check_env(resolve_env(SIMPLE_SPREAD, TrainConfig(env=SIMPLE_SPREAD, critic="global")),
                             steps=20, isolated=True)
    assert report.ok, report.problems
    assert report.spec is not None and report.spec.describe() == (
        "3 agents, each with observations (18,) float32, 5 actions; the critic reads the env's state(), "
        "(54,) float32")


async def test_a_global_critic_with_no_state_to_read_is_one_sentence():
    cfg = TrainConfig(env=MEETING, env_kwargs={"dict_obs": True}, critic="global")
    report = await check_env(resolve_env(MEETING, cfg), steps=5)
    assert report.problems == [
        "--critic global needs the env's global state, and MeetingAgents has no state_space while its "
        "agents' observations are Dict, not Box, so they cannot be concatenated instead; give the env a "
        "state() and state_space (PettingZoo's), or use --critic local."]


async def test_check_env_checks_the_state_a_global_critic_reads():
    cfg = TrainConfig(env=MEETING, env_kwargs={**STATE, "fault": "state_shape"}, critic="global")
    report = await check_env(resolve_env(MEETING, cfg), steps=20)
    assert report.problems == [
        "state() after step() returned shape (4,) but state_space says (3,); make them agree (--critic "
        "global reads it)."]


def test_a_global_critic_of_a_single_agent_env_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--critic global gives the value head the global state of a "
                       r"multi-agent env .* drop --critic global\.$"):
        train(config(tmp_path / "single", env="CartPole-v1", critic="global"))


@pytest.mark.slow
def test_a_global_critic_resumes_bit_identically(tmp_path, no_leaks):
    """The state is an observation key of the storage: checkpointed and restored with the rollout."""
    _resumed_run_matches(tmp_path, ("team_return_mean",), critic="global", env_kwargs=STATE,
                         normalize_obs=True)


@pytest.mark.slow
async def test_a_global_critic_acts_evaluates_and_exports_without_the_state(tmp_path, no_leaks):
    env = MEETING.replace("meeting_agents", "MeetingAgents")
    observations, _ = resolve_env(env)().reset(seed=3)
    async with Trainer(config(tmp_path / "run", critic="global", agent_id=True, workers=1)) as trainer:
        async for _ in trainer.updates():
            actions = await trainer.act(observations, deterministic=True)
            assert set(actions) == set(observations)
    played = await evaluate(tmp_path / "run", episodes=2, deterministic=True)
    assert all(8 <= length <= 14 for length in played.lengths)
    exported = await export_policy(tmp_path / "run", "torchscript")
    assert exported.inputs == ("agent_id", "obs")
    policy, module = await load_policy(tmp_path / "run"), torch.jit.load(str(exported.file))
    one_hot = torch.eye(3)[:1]
    assert module(one_hot, torch.from_numpy(observations["agent_0"])[None]).item() == actions["agent_0"]
    assert policy.spec.critic_keys == ("global_state", "agent_id")


# --env-backend ray: the rows of an env on one actor, where a row that waits for the env's other agents
# answers in the message that steps the env.

ON_RAY = {"env_backend": "ray", "ray_actors": 2}


def test_a_ray_actors_rows_that_wait_answer_with_the_message_that_steps_their_env():
    """The actor's body without Ray: rows 0 and 2 of an env ask in one message and wait; row 1's message
    steps the env and answers all three (in the order they finished: at the end of an episode, a row
    resets once every row has), each reply with the observation (and a time limit's final observation)
    its own command wrote."""
    from htsrl_aio.backends.ray_actors import ReplicaHost
    from htsrl_aio.backends.worker import Command

    host = ReplicaHost(resolve_env(MEETING), _spec(MEETING), (0, 1, 2), 0, ROLLOUT, False, ())
    host.hosted.build()
    truncated = 0
    for row, kind in enumerate(["reset"] + ["step"] * (ROLLOUT - 1)):
        commands = [Command(kind, env, 0, row, np.int64(env)) for env in (0, 1, 2)]  # the rows move apart
        waiting = host.run([(commands[0], None), (commands[2], None)])
        assert waiting.replies == [] and waiting.obs == {} and waiting.final == {}
        answer = host.run([(commands[1], None)])
        order = [reply.env_id for reply in answer.replies]
        assert sorted(order) == [0, 1, 2]
        wrote = row + (kind == "step")
        assert [obs.tolist() for obs in answer.obs["obs"]] == \
            [host.slots.slot(0, wrote, env)["obs"].tolist() for env in order]
        cut = [reply.env_id for reply in answer.replies if kind == "step" and reply.value.truncated]
        assert [obs.tolist() for obs in answer.final.get("obs", [])] == \
            [host.slots.final_slot(env)["obs"].tolist() for env in cut]
        truncated += len(cut)
    assert len({obs.tobytes() for obs in answer.obs["obs"]}) == 3  # the agents see different things
    assert truncated == 3  # the episode (8-14 steps) ended within the rollout, by its time limit
    host.close()


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
def test_ray_actors_host_a_multi_agent_env(tmp_path, no_leaks):
    """Once refused ("--env-backend ray does not host multi-agent envs yet")."""
    summary = train(config(tmp_path / "run", total_steps=NUM_ENVS * ROLLOUT, **ON_RAY))
    assert summary["updates"] == 1
    env_runs = json.loads((tmp_path / "run" / "config.json").read_text())["env_runs"]
    assert env_runs == "on 2 Ray actors (1 node)"
    assert metrics_rows(tmp_path / "run")[-1]["agent_steps"] == 3 * NUM_ENVS * ROLLOUT


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("ray_instance")
@pytest.mark.parametrize("critic", ["local", "global"])
def test_on_ray_actors_the_same_bits_as_the_event_loop(tmp_path, no_leaks, critic):
    """Agents leave at seeded random steps of steps that take a random time; with --max-batch 2 the 3 rows
    of an env reach their actor in different messages and wait there for each other."""
    placements = {"event_loop": PLACEMENTS["event_loop"],
                  "ray_actors": {**ON_RAY, "max_batch": 2, "learner": "thread"}}
    same_bits_in_every_placement(functools.partial(config, env_kwargs={**LEAVING, **STATE}, critic=critic),
                                 tmp_path, UPDATES, placements)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("ray_instance")
def test_resume_on_ray_actors_with_agents_that_leave_is_bit_identical(tmp_path, no_leaks):
    """The env's state travels to the first agent's row on its actor; the head sends each row the
    observation it stands at."""
    _resumed_run_matches(tmp_path, ("agent_steps", "team_return_mean"),
                         {"ray_actors": 1, "learner": "thread"}, env_kwargs=LEAVING, **ON_RAY)


def _spec(env: str, **config):
    return EnvSpec.of_parallel_env(resolve_env(env)(), **config)


@pytest.mark.slow
def test_the_readmes_pistonball_example_trains(tmp_path, no_leaks, monkeypatch):
    """PettingZoo's Pistonball through SuperSuit's wrappers (examples/pistonball.py): 20 agents of 84x84x3
    frames, read by the shared CNN; a few updates, as the README's command does at length."""
    pytest.importorskip("pymunk")
    pytest.importorskip("supersuit")
    monkeypatch.chdir(ROOT)  # the factory is examples.pistonball, found from the repository root
    summary = train(TrainConfig(env="examples.pistonball:parallel_env", num_envs=2, rollout=16,
                                total_steps=2 * 16 * 2, minibatches=2, logdir=str(tmp_path / "run"),
                                progress=False, env_kwargs={"max_cycles": 20}))
    assert summary["updates"] == 2
    rows = metrics_rows(tmp_path / "run")
    assert rows[-1]["agent_steps"] == 20 * 2 * 16 * 2
