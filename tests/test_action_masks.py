"""Legal-action masks: a masked action is never sampled, whichever way the env offers the mask, on every
path that acts (inference, eval, Trainer.act), with the same bits everywhere; bad masks are one sentence."""

import functools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from harness import actions_trace, same_bits_in_every_placement

from htsrl_aio import EnvError, TrainConfig, Trainer, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.distributions import MASKED_LOGIT, make_distribution
from htsrl_aio.envs import check_env, resolve_env
from htsrl_aio.envs.spaces import ActionSpec, ObsLayout
from htsrl_aio.models import ActorCritic

MASKED = "envs_for_tests:random_mask_env"  # raises on an illegal action: a run that ends took none
NUM_ENVS, ROLLOUT, UPDATES = 4, 16, 3
SIZES = (3, 4, 5)


def config(run_dir: Path, source: str = "key", actions: str = "discrete", **overrides) -> TrainConfig:
    base = {"env": MASKED, "env_kwargs": {"source": source, "actions": actions}, "num_envs": NUM_ENVS,
            "rollout": ROLLOUT, "total_steps": NUM_ENVS * ROLLOUT * UPDATES, "minibatches": 2,
            "logdir": str(run_dir), "progress": False, "workers": 1}
    return TrainConfig(**{**base, **overrides})


def random_masks(rng: np.random.Generator, rows: int, sizes: tuple[int, ...] = SIZES,
                 legal: float = 1 / 3) -> np.ndarray:
    """Boolean masks over `sizes`' choices, each action legal with probability `legal`, at least one per
    choice."""
    groups = []
    for n in sizes:
        group = rng.random((rows, n)) < legal
        group[np.arange(rows), rng.integers(n, size=rows)] = True
        groups.append(group)
    return np.concatenate(groups, axis=1)


def legal(mask: np.ndarray, actions: np.ndarray) -> bool:
    offsets = np.cumsum((0, *SIZES[:-1]))
    return bool(mask[np.arange(len(mask))[:, None], offsets + actions].all())


def test_a_masked_category_is_never_sampled_scored_or_the_mode():
    distribution = make_distribution(ActionSpec.from_space(gym.spaces.MultiDiscrete(SIZES)))
    rng = np.random.default_rng(0)
    rows = 4096
    mask = random_masks(rng, rows)
    logits = torch.from_numpy(rng.normal(0, 3, (rows, sum(SIZES))).astype(np.float32))
    masked = logits.masked_fill(torch.from_numpy(~mask), MASKED_LOGIT)
    noise = rng.random((rows, len(SIZES)))
    noise[:64] = 0.0  # the ends of the noise's range: the first and the last category are the edge cases
    noise[64:128] = np.nextafter(1.0, 0.0)
    actions = distribution.sample(masked, torch.from_numpy(noise)).numpy()
    assert legal(mask, actions)
    assert legal(mask, distribution.mode(masked).numpy())
    # Scored as the distribution over the legal actions alone: illegal ones have probability exactly 0.
    legal_only = logits.masked_fill(torch.from_numpy(~mask), float("-inf"))
    expected_logp = sum(part.log_softmax(-1).gather(-1, torch.from_numpy(actions[:, k:k + 1])).squeeze(-1)
                        for k, part in enumerate(legal_only.split(SIZES, -1)))
    torch.testing.assert_close(distribution.log_prob(masked, torch.from_numpy(actions)), expected_logp)
    expected_entropy = sum(-(p.softmax(-1) * p.log_softmax(-1)).nan_to_num().sum(-1)
                           for p in legal_only.split(SIZES, -1))
    torch.testing.assert_close(distribution.entropy(masked), expected_entropy)
    unmasked = distribution.sample(logits, torch.from_numpy(noise)).numpy()
    assert not legal(mask, unmasked)  # the test's masks would have been broken without masking


def test_the_model_masks_the_logits_and_never_reads_the_mask():
    space = gym.spaces.Dict({"features": gym.spaces.Box(-1, 1, (4,), np.float32),
                             "action_mask": gym.spaces.MultiBinary(sum(SIZES))})
    layout = ObsLayout.from_space(space, SIZES)
    assert layout.mask_key == "action_mask"
    torch.manual_seed(0)
    model = ActorCritic(layout, make_distribution(ActionSpec.from_space(gym.spaces.MultiDiscrete(SIZES))),
                        (16,))
    assert model.encoder.size == 4  # the features only
    features = torch.randn(8, 4)
    masks = torch.from_numpy(random_masks(np.random.default_rng(1), 8).astype(np.int8))
    params, value = model({"features": features, "action_mask": masks})
    open_params, open_value = model({"features": features, "action_mask": torch.ones_like(masks)})
    torch.testing.assert_close(value, open_value)
    torch.testing.assert_close(params[masks == 1], open_params[masks == 1])
    assert (params[masks == 0] == MASKED_LOGIT).all()


def test_runs_never_take_a_masked_action_whichever_way_the_env_offers_it(tmp_path, no_leaks):
    """The env raises on an illegal action, so a run that ends proves none was sampled; the three ways of
    offering one mask train the same bits (each becomes the same observation key)."""
    summaries = {source: train(config(tmp_path / source, source)) for source in ("key", "method", "info")}
    assert len({summary["final_params_sha256"] for summary in summaries.values()}) == 1
    traces = [actions_trace(tmp_path / source) for source in summaries]
    assert len(traces[0]) == UPDATES and traces[0] == traces[1] == traces[2]
    assert train(config(tmp_path / "multi", "key", "multi_discrete"))["updates"] == UPDATES


def test_without_masks_the_same_env_gets_illegal_actions(tmp_path, no_leaks):
    with pytest.raises(EnvError, match="illegal action"):
        train(config(tmp_path / "run", "method", action_mask="off"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_masked_runs_train_the_same_bits_everywhere(tmp_path, no_leaks, mode):
    """Masks from infos, over MultiDiscrete actions, steps of random duration: the same bits whatever the
    workers, batching or backend."""
    same_bits_in_every_placement(functools.partial(config, source="info", actions="multi_discrete", mode=mode,
                                                   normalize_obs=True), tmp_path, UPDATES)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hts", "sync"])
def test_masked_agents_train_the_same_bits_everywhere(tmp_path, no_leaks, mode):
    """Each agent of a ParallelEnv its own mask in its observation (agents that leave too)."""
    pytest.importorskip("pettingzoo")
    same_bits_in_every_placement(functools.partial(
        config, env="envs_for_tests:meeting_agents", env_kwargs={"masked": True, "leaving": 0.15}, mode=mode,
        agent_id=True), tmp_path, UPDATES)


def test_a_parallel_envs_info_masks_train_as_its_agents_observation_keys(tmp_path, no_leaks):
    """Each agent's mask in its info (the meeting env raises on an illegal move) trains the same bits as
    the same masks in its observation; without masks the env gets an illegal move."""
    pytest.importorskip("pettingzoo")
    meeting = functools.partial(config, env="envs_for_tests:meeting_agents")
    in_obs = train(meeting(tmp_path / "obs", env_kwargs={"masked": True, "late": 1}))
    in_info = train(meeting(tmp_path / "info", env_kwargs={"masked": "info", "dict_obs": True, "late": 1}))
    assert in_obs["final_params_sha256"] == in_info["final_params_sha256"]
    assert actions_trace(tmp_path / "obs") == actions_trace(tmp_path / "info")
    with pytest.raises(EnvError, match="illegal action"):
        train(meeting(tmp_path / "off", env_kwargs={"masked": "info"}, action_mask="off"))


async def test_check_env_finds_a_parallel_envs_info_masks():
    pytest.importorskip("pettingzoo")
    env = "envs_for_tests:meeting_agents"
    report = await check_env(resolve_env(env, TrainConfig(env=env, env_kwargs={"masked": "info"})), steps=40)
    assert report.ok, report.problems
    assert report.notes == ["the env exposes an action mask (info['action_mask']), which runs apply: a "
                            "masked action is never sampled (--action-mask off ignores it)."]


async def test_trainer_act_takes_the_mask_an_env_offers_outside_its_observation(tmp_path, no_leaks):
    rng = np.random.default_rng(0)
    async with Trainer(config(tmp_path / "run", "method", "multi_discrete")) as trainer:
        async for _ in trainer.updates():
            masks = random_masks(rng, 50, (3, 4), legal=0.5).astype(np.int8)
            for mask in masks:
                action = await trainer.act(rng.uniform(-1, 1, 4).astype(np.float32), action_mask=mask)
                assert mask[action[0]] and mask[3 + action[1]]
        with pytest.raises(ValueError, match="pass action_mask="):
            await trainer.act(np.zeros(4, np.float32))
    async with Trainer(config(tmp_path / "plain", "key", action_mask="off")) as trainer:
        with pytest.raises(ValueError, match="applies no action mask"):
            await trainer.act({"features": np.zeros(4, np.float32), "action_mask": np.ones(5, np.int8)},
                              action_mask=np.ones(5, np.int8))


async def test_trainer_act_takes_each_agents_info_mask(tmp_path, no_leaks):
    pytest.importorskip("pettingzoo")
    rng = np.random.default_rng(0)
    env = "envs_for_tests:meeting_agents"
    async with Trainer(config(tmp_path / "run", env=env, env_kwargs={"masked": "info"})) as trainer:
        async for _ in trainer.updates():
            for _ in range(30):
                drawn = random_masks(rng, 3, (3,), legal=0.4).astype(np.int8)
                masks = {f"agent_{i}": mask for i, mask in enumerate(drawn)}
                obs = {agent: rng.uniform(-3, 3, 3).astype(np.float32) for agent in masks}
                actions = await trainer.act(obs, action_mask=masks)
                assert all(masks[agent][action] for agent, action in actions.items())
        with pytest.raises(ValueError, match="pass action_mask="):
            await trainer.act({"agent_0": np.zeros(3, np.float32)})


def test_eval_plays_only_legal_actions(tmp_path, no_leaks, capsys):
    train(config(tmp_path / "run", "info"))
    for flags in ([], ["--deterministic"]):
        assert cli_main(["eval", str(tmp_path / "run"), "--episodes", "3", *flags]) == 0
    assert "illegal" not in capsys.readouterr().out


@pytest.mark.parametrize("kwargs,sentence", [
    ({"source": "key", "fault": "none_legal"},
     "returned an action mask at step 2 of episode 0 holding no legal action; allow at least one action"),
    ({"source": "info", "fault": "late_info"},
     "the env's reset() returned an info without 'action_mask', which other infos carry as its action mask"),
])
def test_a_bad_mask_is_one_sentence(tmp_path, capsys, kwargs, sentence):
    argv = ["train", "--env", MASKED, "--env-kwargs", *(f"{k}={v}" for k, v in kwargs.items()),
            "--num-envs", "2", "--rollout", "8", "--total-steps", "16", "--logdir", str(tmp_path / "run"),
            "--no-progress"]
    code = cli_main(argv) if kwargs["fault"] != "late_info" else None
    if code is None:
        with pytest.raises(SystemExit) as exited:
            cli_main(argv)
        code = exited.value.code
    assert code != 0
    err = capsys.readouterr().err
    assert sentence in err and "Traceback" not in err


@pytest.mark.parametrize("space,action_space,sentence", [
    (gym.spaces.MultiBinary(3), gym.spaces.Discrete(2),
     "observation_space['action_mask'] is MultiBinary(3), which cannot mask 2 actions"),
    (gym.spaces.MultiBinary(2), gym.spaces.Box(-1, 1, (2,), np.float32),
     "the env offers an action mask, which restricts Discrete and MultiDiscrete actions, and its actions are "
     "continuous actions (2,)"),
])
def test_a_mask_that_cannot_mask_the_actions_is_one_sentence(space, action_space, sentence):
    from htsrl_aio.envs.factory import EnvSpec
    from htsrl_aio.envs.spaces import UnsupportedSpace

    obs = gym.spaces.Dict({"features": gym.spaces.Box(-1, 1, (4,), np.float32), "action_mask": space})
    with pytest.raises(UnsupportedSpace, match="--action-mask off") as raised:
        EnvSpec.from_spaces(obs, action_space)
    assert sentence in str(raised.value)
    assert EnvSpec.from_spaces(obs, action_space, masks=False).obs.mask_key is None  # off: an observation
