"""Batch make-up never changes a row's numbers, hence never an action, for every action family."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from harness import small_model, vector_spec

from htsrl_aio.config import CNN_INFERENCE_BLOCK, MLP_INFERENCE_BLOCK
from htsrl_aio.distributions import make_distribution
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.tickets import TicketNoise
from htsrl_aio.steps import StepTicket

ACTION_SPACES = {
    "discrete": gym.spaces.Discrete(3),
    "multi_discrete": gym.spaces.MultiDiscrete([3, 2, 4]),
    "multi_binary": gym.spaces.MultiBinary(3),
    "box": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """As a run's inference has it (--torch-threads 1): intra-op threads that spin against other work on
    a loaded machine make these many small passes 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inference(space: gym.Space, spread: bool = False,
                   block: int = CNN_INFERENCE_BLOCK) -> BatchedInference:
    """Inference serving up to two blocks of rows at once. `spread`: every parameter drawn from N(0, 1), as
    far from the small initialisation as training takes them: large, varied distribution parameters, where
    vectorised kernels' tails show."""
    torch.manual_seed(0)
    spec = vector_spec(space)
    dist = make_distribution(spec.action)
    noise = TicketNoise(7, 2 * block, 4, dist.noise_size, dist.noise)
    model = small_model(spec, (64, 64))
    if spread:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_()
    return BatchedInference(model, dist, noise, 2 * block, spec.obs.arrays(), block=block)


@pytest.mark.parametrize("block", [CNN_INFERENCE_BLOCK, MLP_INFERENCE_BLOCK])  # the defaults
@pytest.mark.parametrize("spread", [False, True], ids=["initial", "spread"])
@pytest.mark.parametrize("kind", list(ACTION_SPACES))
def test_rows_alone_equal_rows_in_batches_of_every_size(kind, spread, block):
    # Actions, log-probabilities and values, bit for bit, whatever rows share the batch and where.
    inference = make_inference(ACTION_SPACES[kind], spread, block)
    cap = inference.max_batch
    rng = np.random.default_rng(0)
    obs = [{"obs": row} for row in rng.standard_normal((cap, 4)).astype(np.float32) * 3]
    tickets = [StepTicket(0, env, 1) for env in range(cap)]
    alone = [inference.infer([tickets[i]], [obs[i]])[0] for i in range(cap)]
    # Every size up to 16, and those at each block's edges beyond.
    edges = {n * block + d for n in (1, 2) for d in (-1, 0, 1)}
    for size in sorted(set(range(1, 17)) | {e for e in edges if e <= cap}):
        for _ in range(3):
            members = rng.choice(cap, size=size, replace=False)  # random rows in random positions
            batch = inference.infer([tickets[i] for i in members], [obs[i] for i in members])
            for i, result in zip(members, batch):
                np.testing.assert_array_equal(result.action, alone[i].action)
                assert (result.logprob, result.value) == (alone[i].logprob, alone[i].value), \
                    f"row {i} differs in a batch of {size}"


# Widths whose blocks leave a remainder for the scalar tail of CPU elementwise loops: on AVX2 (16 float32
# or 8 float64 a step) and on AVX-512 (32 and 16).
TAIL_SPACES = {
    "bits_3": gym.spaces.MultiBinary(3),
    "bits_5": gym.spaces.MultiBinary(5),
    "bits_11": gym.spaces.MultiBinary(11),
    "discrete_3": gym.spaces.Discrete(3),
    "discrete_5": gym.spaces.Discrete(5),
    "multi_discrete": gym.spaces.MultiDiscrete([3, 2, 4]),
    "box_5": gym.spaces.Box(-1.0, 1.0, (5,), np.float32),
}


@pytest.mark.parametrize("rows", [8, 24, 5])
@pytest.mark.parametrize("kind", list(TAIL_SPACES))
def test_a_rows_log_prob_and_action_do_not_depend_on_its_place_in_the_block(kind, rows):
    # The distribution's own kernels (exp, sigmoid, softplus) on a block of parameters: every row gets the
    # bits it gets in any other row of the block.
    dist = make_distribution(vector_spec(TAIL_SPACES[kind]).action)
    gen = torch.Generator().manual_seed(0)
    width = dist.head(4)(torch.zeros(1, 4)).shape[-1]
    params = torch.randn(rows, width, generator=gen) * 3
    noise = torch.rand(rows, dist.noise_size, generator=gen, dtype=torch.float64)
    if dist.noise == "normal":
        noise = torch.randn(rows, dist.noise_size, generator=gen, dtype=torch.float64)
    actions = dist.sample(params, noise)
    logprobs = dist.log_prob(params, actions)
    for shift in range(1, rows):
        order = torch.roll(torch.arange(rows), shift)  # row order[j] moves to place j
        moved_actions = dist.sample(params[order], noise[order])
        moved = dist.log_prob(params[order], moved_actions)
        assert torch.equal(moved_actions, actions[order])
        assert torch.equal(moved, logprobs[order]), f"a row's log-probability changed when moved by {shift}"


def test_unpadded_forward_is_not_batch_invariant_here():
    """Why padding exists: without it, some batch sizes change the last bits of a row."""
    inference = make_inference(ACTION_SPACES["discrete"])
    obs = torch.from_numpy(np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32))
    with torch.no_grad():
        full = inference.model({"obs": obs})[0]
        mismatches = sum(not torch.equal(inference.model({"obs": obs[:b]})[0], full[:b])
                         for b in range(1, 65))
    if mismatches == 0:
        pytest.skip("this CPU's kernels happen to be batch-invariant for these shapes")
    assert mismatches > 0


def test_each_ticket_has_its_own_noise():
    noise = TicketNoise(3, num_envs=4, rollout_len=8)
    again = TicketNoise(3, num_envs=4, rollout_len=8)
    u = [float(noise.of(StepTicket(2, e, t))[0]) for e in range(4) for t in range(8)]
    # The same ticket gives the same noise whatever was drawn before it, and in any order.
    assert [float(again.of(StepTicket(2, e, t))[0]) for e in reversed(range(4)) for t in reversed(range(8))] \
        == list(reversed(u))
    assert len(set(u)) == len(u)
    assert noise.of(StepTicket(3, 0, 0)) != noise.of(StepTicket(2, 0, 0))


def _samples(space: gym.Space, params: torch.Tensor, n: int) -> torch.Tensor:
    dist = make_distribution(vector_spec(space).action)
    noise = TicketNoise(11, num_envs=1, rollout_len=n, size=dist.noise_size, kind=dist.noise)
    draws = torch.from_numpy(np.stack([noise.of(StepTicket(0, 0, t)) for t in range(n)]))
    return dist.sample(params.expand(n, -1), draws)


def test_categorical_sampling_follows_the_probabilities():
    actions = _samples(ACTION_SPACES["discrete"], torch.log(torch.tensor([[0.2, 0.5, 0.3]])), 20000)
    freq = np.bincount(actions.numpy(), minlength=3) / len(actions)
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.015)


def test_multi_discrete_samples_each_choice_from_its_own_logits():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.1, 0.9, 0.25, 0.25, 0.25, 0.25]]))
    actions = _samples(ACTION_SPACES["multi_discrete"], logits, 20000).numpy()
    np.testing.assert_allclose(np.bincount(actions[:, 0], minlength=3) / 20000, [0.7, 0.2, 0.1], atol=0.015)
    np.testing.assert_allclose(np.bincount(actions[:, 1], minlength=2) / 20000, [0.1, 0.9], atol=0.015)
    np.testing.assert_allclose(np.bincount(actions[:, 2], minlength=4) / 20000, [0.25] * 4, atol=0.015)


def test_bernoulli_bits_and_gaussian_samples_follow_their_parameters():
    bits = _samples(ACTION_SPACES["multi_binary"], torch.tensor([[0.0, 2.0, -2.0]]), 20000).float()
    np.testing.assert_allclose(bits.mean(0).numpy(), torch.sigmoid(torch.tensor([0.0, 2.0, -2.0])).numpy(),
                               atol=0.015)
    mean, log_std = torch.tensor([[0.5, -3.0]]), torch.tensor([[np.log(0.2), np.log(2.0)]])
    draws = _samples(ACTION_SPACES["box"], torch.cat([mean, log_std], 1), 20000)
    np.testing.assert_allclose(draws.mean(0).numpy(), [0.5, -3.0], atol=0.05)
    np.testing.assert_allclose(draws.std(0).numpy(), [0.2, 2.0], rtol=0.03)


@pytest.mark.parametrize("kind", list(ACTION_SPACES))
def test_log_prob_and_entropy_agree_with_torch_distributions(kind):
    space = ACTION_SPACES[kind]
    dist = make_distribution(vector_spec(space).action)
    torch.manual_seed(1)
    head = dist.head(5)
    params = head(torch.randn(6, 5)).detach()
    noise = torch.rand(6, dist.noise_size, dtype=torch.float64) if dist.noise == "uniform" \
        else torch.randn(6, dist.noise_size, dtype=torch.float64)
    actions = dist.sample(params, noise)
    if kind == "discrete":
        ref = torch.distributions.Categorical(logits=params)
    elif kind == "multi_discrete":
        parts = [torch.distributions.Categorical(logits=p) for p in params.split([3, 2, 4], -1)]
        lp = sum(p.log_prob(actions[:, k]) for k, p in enumerate(parts))
        torch.testing.assert_close(dist.log_prob(params, actions), lp)
        torch.testing.assert_close(dist.entropy(params), sum(p.entropy() for p in parts))
        return
    elif kind == "multi_binary":
        ref = torch.distributions.Independent(torch.distributions.Bernoulli(logits=params), 1)
    else:
        mean, log_std = params.chunk(2, -1)
        ref = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)
    torch.testing.assert_close(dist.log_prob(params, actions), ref.log_prob(actions.to(params.dtype)))
    torch.testing.assert_close(dist.entropy(params), ref.entropy())
