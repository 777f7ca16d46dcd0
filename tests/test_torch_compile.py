"""--torch-compile: compiled encoders keep a run's bits across placements and through a resume, and a
run that cannot keep them, or a machine that cannot compile, is refused in one sentence."""

from pathlib import Path

import pytest
import torch._inductor.cpp_builder
from harness import PLACEMENTS, as_if_crashed_after, metrics_rows, same_bits_in_every_placement

from htsrl_aio import ConfigError, TrainConfig, resume, train

MEETING = "envs_for_tests:meeting_agents"


def config(run_dir: Path, **overrides) -> TrainConfig:
    """A CNN reads ManySpacesEnv's 36x36 image, beside a Discrete and a Box: the multi-input encoder."""
    base = {"env": "envs_for_tests:ManySpacesEnv", "num_envs": 4, "rollout": 8, "total_steps": 4 * 8 * 6,
            "workers": 2, "torch_compile": "all", "logdir": str(run_dir), "progress": False,
            "checkpoint_every": 0}
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
def test_compiled_encoders_repeat_their_bits_in_every_placement_and_differ_from_eager(tmp_path, no_leaks):
    """Thread and process learners, worker counts, batch make-up and the loop backend: the same bits; and
    the compiled kernels are really in use: eager ones give other parameters."""
    compiled = same_bits_in_every_placement(config, tmp_path, updates=6, placements=PLACEMENTS)
    eager = train(config(tmp_path / "eager", torch_compile="none"))
    assert eager["final_params_sha256"] != compiled["final_params_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["none", "lstm"])
def test_a_compiled_run_resumed_from_a_periodic_checkpoint_ends_with_the_same_bits(tmp_path, no_leaks,
                                                                                   memory):
    """The resumed learner's first update sees its batch sizes in another order than the original's
    (hts PPO evaluates the current parameters first only from the second update on); static shapes make
    each size's graph the same whichever came first. With --memory the encoder also reads whole
    sequences (the replay) and single steps (inference, the bootstrap)."""
    full = train(config(tmp_path / "full", checkpoint_every=3, total_steps=4 * 8 * 8, memory=memory))
    crashed = as_if_crashed_after(tmp_path / "full", tmp_path / "crashed")
    resumed = resume(crashed / "checkpoints" / "update-0000003.pt", learner="thread")
    assert resumed["final_params_sha256"] == full["final_params_sha256"]
    assert [r["actions_sha256"] for r in metrics_rows(crashed)] == \
        [r["actions_sha256"] for r in metrics_rows(tmp_path / "full")]


def test_a_multi_agent_env_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^--torch-compile compiles a graph for each batch size, and a "
                       r"multi-agent env's minibatches .* drop --torch-compile for multi-agent envs\.$"):
        train(config(tmp_path / "run", env=MEETING))


def test_compiled_inference_without_fixed_blocks_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^--torch-compile all .* use --torch-compile learner, or keep "
                       r"--deterministic\.$"):
        train(config(tmp_path / "run", env="CartPole-v1", deterministic=False))


def test_a_machine_without_a_cpp_compiler_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    def no_compiler() -> str:
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ConfigError, match=r"^--torch-compile builds C\+\+ kernels on a CPU and this machine "
                       r"has no C\+\+ compiler .* or drop --torch-compile\.$"):
        train(config(tmp_path / "run", env="CartPole-v1", torch_compile="learner"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
