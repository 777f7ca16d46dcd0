"""`htsrl-aio export`: the ONNX and TorchScript policies act as the library's deterministic policy does."""

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from htsrl_aio import TrainConfig, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.envs.spaces import ObsLayout
from htsrl_aio.evaluate import TrainedPolicy, load_policy
from htsrl_aio.export import SIGNATURE_FILE
from htsrl_aio.models import PolicyMemory
from htsrl_aio.outputs.run_dir import atomic_write

OBSERVATIONS = 1000
SEQUENCES = 8  # a recurrent policy is stepped as 8 envs side by side, OBSERVATIONS / 8 steps each
TINY = {"num_envs": 4, "rollout": 32, "total_steps": 4 * 32 * 2, "workers": 1, "progress": False}

POLICIES = {
    "box_obs": {"env": "CartPole-v1", "normalize_obs": True},
    # A Dict of an image (7x7 uint8, scaled by 1/255), a Discrete (one-hot) and a mission text (dropped).
    "dict_with_image": {"env": "MiniGrid-Empty-5x5-v0", "normalize_obs": True},
    # A Tuple of a Discrete starting at 1, a 36x36 HWC image read by a CNN and a float64 Box; actions
    # MultiDiscrete([3, 2], start=[-1, 0]). Its reward favours one action so much that two updates at the
    # usual learning rate take it everywhere: a tiny one keeps a policy whose choices differ.
    "multi_discrete": {"env": "envs_for_tests:ManySpacesEnv", "env_kwargs": {"actions": "multi_discrete"},
                       "lr": 1e-6},
    "gru_box_actions": {"env": "envs_for_tests:ManySpacesEnv", "env_kwargs": {"actions": "box"},
                        "memory": "gru", "normalize_obs": True},
    # Legal-action masks from the env's infos (an `action_mask` input), MultiDiscrete([3, 4]) actions.
    "masked": {"env": "envs_for_tests:random_mask_env", "env_kwargs": {"source": "info",
                                                                       "actions": "multi_discrete"}},
}


@pytest.fixture
def one_thread():
    """The library acts one row at a time: one torch thread does that faster than threads that contend
    for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def observations(policy: TrainedPolicy, count: int) -> list:
    """Half sampled from the observation space (but for masks that allow nothing, which the layout
    refuses), half met by an env playing random legal actions (seeded)."""
    env = policy.factory()
    env.observation_space.seed(0)
    rng = np.random.default_rng(0)
    found = []
    while len(found) < count // 2:
        sample = env.observation_space.sample()
        try:
            policy.spec.obs.encode(sample)
        except ValueError:
            continue
        found.append(sample)
    obs, _ = env.reset(seed=0)
    while len(found) < count:
        found.append(obs)
        mask = policy.spec.obs.encode(obs).get("action_mask")
        action = policy.spec.action.to_env(policy.spec.action.random(rng, mask))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return found


def batched(policy: TrainedPolicy, rows: list) -> list[np.ndarray]:
    """Observations as the exported model's inputs: one array per key, in the env's own form."""
    fields = policy.spec.obs.fields
    return [np.stack([np.asarray(ObsLayout.leaf(obs, f, "test")) for obs in rows]) for f in fields]


def library_actions(policy: TrainedPolicy, rows: list) -> np.ndarray:
    """What eval plays (--deterministic), one observation after another, memoryless."""
    memory = PolicyMemory(0)
    return np.stack([np.asarray(policy.act(obs, memory, None)) for obs in rows])


def assert_same_actions(expected: np.ndarray, got: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, expected)


def exported(run: Path, fmt: str):
    """The file `htsrl-aio export` writes by default, as a callable from input arrays to output arrays."""
    assert cli_main(["export", str(run), "--format", fmt]) == 0
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(run / "policy.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return names, lambda *arrays: session.run(None, dict(zip(names, arrays)))
    extra = {SIGNATURE_FILE: ""}
    module = torch.jit.load(str(run / "policy.pt"), _extra_files=extra)
    names = json.loads(extra[SIGNATURE_FILE])["inputs"]

    def call(*arrays):
        out = module(*(torch.from_numpy(a) for a in arrays))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    return names, call


def step_sequences(policy: TrainedPolicy, rows: list, model) -> None:
    """Step SEQUENCES envs side by side through `rows`, each episode starting every few steps (a different
    period per env): the exported model carries its own memory_out back as memory_in, the library one
    PolicyMemory per env, and their actions and states agree at every step."""
    steps = len(rows) // SEQUENCES
    memories = [PolicyMemory(policy.model.state_size) for _ in range(SEQUENCES)]
    state = np.zeros((SEQUENCES, policy.model.state_size), np.float32)
    for t in range(steps):
        starts = np.array([t % (5 + env) == 0 for env in range(SEQUENCES)])
        block = rows[t * SEQUENCES:(t + 1) * SEQUENCES]
        for env, memory in enumerate(memories):
            if starts[env]:
                memory.reset()
        expected = np.stack([np.asarray(policy.act(obs, mem, None)) for obs, mem in zip(block, memories)])
        action, state = model(*batched(policy, block), state, starts)
        assert_same_actions(expected, action)
        np.testing.assert_allclose(state, np.concatenate([m.state for m in memories]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", POLICIES)
def test_exported_policies_act_as_the_library_deterministic_policy(name, tmp_path, one_thread):
    run = tmp_path / "run"
    train(TrainConfig(**POLICIES[name], **TINY, logdir=str(run)))
    policy = asyncio.run(load_policy(run))
    rows = observations(policy, OBSERVATIONS)
    recurrent = policy.model.state_size > 0
    expected = None if recurrent else library_actions(policy, rows)
    if expected is not None:
        assert len(np.unique(expected.reshape(OBSERVATIONS, -1), axis=0)) > 1  # a policy that chooses
    keys = list(policy.spec.obs.keys)
    for fmt in ("onnx", "torchscript"):
        names, model = exported(run, fmt)
        assert names == keys + (["memory_in", "episode_start"] if recurrent else [])
        if recurrent:
            step_sequences(policy, rows, model)
        else:
            assert_same_actions(expected, model(*batched(policy, rows))[0])


def test_export_without_onnxruntime_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the package were missing
    with pytest.raises(SystemExit) as exited:
        cli_main(["export", str(tmp_path), "--format", "onnx"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("htsrl-aio: error: --format onnx needs onnxruntime, which the export "
                                       "extra installs: pip install 'htsrl-aio[export]'.\n")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_a_missing_or_empty_run_is_one_sentence(fmt, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for target, message in [(tmp_path / "nope", f"run directory {tmp_path / 'nope'} does not exist."),
                            (tmp_path / "empty", "holds no checkpoint")]:
        with pytest.raises(SystemExit) as exited:
            cli_main(["export", str(target), "--format", fmt])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


@pytest.mark.slow
def test_a_bf16_policy_is_refused_for_onnx_and_exported_to_torchscript(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(**POLICIES["multi_discrete"], precision="bf16", **TINY, logdir=str(run)))
    with pytest.raises(SystemExit) as exited:
        cli_main(["export", str(run), "--format", "onnx"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"htsrl-aio: error: {run / 'checkpoint.pt'} was trained with --precision bf16, whose bfloat16 "
        "convolutions onnxruntime does not run on CPUs; export it with --format torchscript.\n")
    assert not (run / "policy.onnx").exists()
    assert cli_main(["export", str(run / "checkpoint.pt"), "--format", "torchscript"]) == 0
    assert torch.jit.load(str(run / "policy.pt")) is not None  # beside the checkpoint, in its run directory


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "policy.onnx"
    target.write_bytes(b"old")

    def fails_halfway(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fails_halfway)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.onnx"]
