"""Batch make-up never changes a row's numbers, hence never an action."""

import numpy as np
import pytest
import torch

from htsrl_aio.models import MLPActorCritic
from htsrl_aio.runtime.inference import BatchedInference
from htsrl_aio.runtime.tickets import StepTicket, TicketSampler

CAP = 16


@pytest.fixture
def inference() -> BatchedInference:
    torch.manual_seed(0)
    model = MLPActorCritic(4, 3, (64, 64))
    return BatchedInference(model, TicketSampler(7, CAP, 4), CAP, (4,), np.dtype(np.float32), block=8)


def test_rows_alone_equal_rows_in_batches_of_every_size(inference):
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((CAP, 4)).astype(np.float32) * 3
    tickets = [StepTicket(0, env, 1) for env in range(CAP)]
    alone = [inference.infer([tickets[i]], [obs[i]])[0] for i in range(CAP)]
    for size in range(1, CAP + 1):
        for _ in range(5):
            members = rng.choice(CAP, size=size, replace=False)  # random rows in random positions
            batch = inference.infer([tickets[i] for i in members], [obs[i] for i in members])
            for i, result in zip(members, batch):
                assert result == alone[i], f"row {i} differs in a batch of {size}"


def test_unpadded_forward_is_not_batch_invariant_here(inference):
    """Why padding exists: without it, some batch sizes change the last bits of a row."""
    obs = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    with torch.no_grad():
        full = inference.model(torch.from_numpy(obs))[0]
        mismatches = sum(not torch.equal(inference.model(torch.from_numpy(obs[:b]))[0], full[:b])
                         for b in range(1, 65))
    if mismatches == 0:
        pytest.skip("this CPU's kernels happen to be batch-invariant for these shapes")
    assert mismatches > 0


def test_each_ticket_has_its_own_stream():
    sampler = TicketSampler(3, num_envs=4, rollout_len=8)
    again = TicketSampler(3, num_envs=4, rollout_len=8)
    u = [sampler.uniform(StepTicket(2, e, t)) for e in range(4) for t in range(8)]
    # The same ticket gives the same uniform whatever was drawn before it, and in any order.
    assert [again.uniform(StepTicket(2, e, t)) for e in reversed(range(4)) for t in reversed(range(8))] \
        == list(reversed(u))
    assert len(set(u)) == len(u)
    assert sampler.uniform(StepTicket(3, 0, 0)) != sampler.uniform(StepTicket(2, 0, 0))


def test_inverse_cdf_sampling_follows_the_probabilities():
    sampler = TicketSampler(11, num_envs=1, rollout_len=20000)
    logits = np.log(np.array([[0.2, 0.5, 0.3]], dtype=np.float32))
    actions = [int(sampler.sample([StepTicket(0, 0, t)], logits)[0]) for t in range(20000)]
    freq = np.bincount(actions, minlength=3) / len(actions)
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.015)
