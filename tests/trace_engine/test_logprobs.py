import math

import pytest
import torch

from trace_engine.logprobs import SequenceBatch, chunked_sequence_logps, sequence_logps, token_kl, token_logps


def test_sequence_logps_matches_explicit_log_softmax_sum():
    torch.manual_seed(0)
    n, t, v = 3, 7, 11
    logits = torch.randn(n, t, v)
    ids = torch.randint(0, v, (n, t))
    mask = torch.zeros(n, t, dtype=torch.bool)
    mask[0, 3:7] = True
    mask[1, 2:5] = True  # row 1 padded after position 4
    mask[2, 6] = True
    expected = torch.zeros(n)
    logp = torch.log_softmax(logits, dim=-1)
    for i in range(n):
        for j in range(1, t):
            if mask[i, j]:
                expected[i] += logp[i, j - 1, ids[i, j]]
    torch.testing.assert_close(sequence_logps(logits, ids, mask), expected)


def test_first_position_is_never_scored():
    logits = torch.randn(1, 4, 5)
    ids = torch.randint(0, 5, (1, 4))
    assert token_logps(logits, ids)[0, 0].item() == 0.0


def test_batches_moved_to_a_device_must_be_right_padded():

    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    left = SequenceBatch(ids, torch.tensor([[1, 1, 1], [0, 1, 1]]), torch.tensor([[False, True, True]] * 2))
    with pytest.raises(ValueError, match="right-padded"):
        left.to("cpu")
    right = SequenceBatch(ids, torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([[False, True, True]] * 2))
    assert right.to("cpu").predicting_positions().tolist() == [0, 1, 3, 4]


def test_token_kl_by_hand():
    # Vocabulary of 2.  Position 0 predicts token 1 (a response token).  ref = (1/2, 1/2), policy = (3/4, 1/4):
    # KL(ref ‖ policy) = 1/2 ln(2/3) + 1/2 ln(2) = 1/2 ln(4/3).  Position 1 predicts token 2: identical -> 0.
    ref = torch.zeros(1, 3, 2)
    policy = torch.zeros(1, 3, 2)
    policy[0, 0] = torch.tensor([math.log(3.0), 0.0])
    both = torch.tensor([[False, True, True]])
    only_first = torch.tensor([[False, True, False]])
    assert token_kl(policy, ref, only_first).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert token_kl(policy, ref, both).item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-6)  # mean of 2
    assert token_kl(policy, ref, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def _full_kl(policy_logits, ref_logits, response_mask):
    """The obvious computation: full log-softmax tensors, masked mean."""
    lp = torch.log_softmax(policy_logits[:, :-1].float(), -1)
    lq = torch.log_softmax(ref_logits[:, :-1].float(), -1)
    per_pos = (lq.exp() * (lq - lp)).sum(-1)
    mask = response_mask[:, 1:].float()
    return (per_pos * mask).sum(1) / mask.sum(1).clamp(min=1)


def _random_batch(seed: int, n: int = 3, t_len: int = 11, v: int = 37):
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(n, t_len, v, generator=g)
    ref = policy + 0.3 * torch.randn(n, t_len, v, generator=g)
    mask = torch.zeros(n, t_len, dtype=torch.bool)
    mask[0, 4:9], mask[1, 2:], mask[2, 6:7] = True, True, True
    ids = torch.randint(0, v, (n, t_len), generator=g)
    return policy, ref, mask, ids


@pytest.mark.parametrize("chunk_tokens", [1, 4, 7, 10_000])
def test_chunked_kl_matches_full_computation_values_and_gradients(chunk_tokens):
    policy, ref, mask, _ = _random_batch(0)
    weights = torch.tensor([0.5, 1.0, 2.0])
    p1 = policy.clone().requires_grad_()
    chunked = token_kl(p1, ref, mask, chunk_tokens=chunk_tokens)
    (chunked * weights).sum().backward()
    p2 = policy.clone().requires_grad_()
    full = _full_kl(p2, ref, mask)
    (full * weights).sum().backward()
    assert torch.allclose(chunked, full, atol=1e-6)
    assert torch.allclose(p1.grad, p2.grad, atol=1e-6)
    assert (chunked > 0).all()


def test_chunked_kl_bf16_logits_keep_dtype_of_gradient():
    policy, ref, mask, _ = _random_batch(1)
    p = policy.bfloat16().requires_grad_()
    kl = token_kl(p, ref.bfloat16(), mask, chunk_tokens=5)
    kl.sum().backward()
    assert kl.dtype == torch.float32 and p.grad.dtype == torch.bfloat16
    assert torch.allclose(kl, _full_kl(policy.bfloat16(), ref.bfloat16(), mask), atol=1e-5)


@pytest.mark.parametrize("chunk_tokens", [1, 6, 10_000])
def test_chunked_sequence_logps_matches_logprobs_module(chunk_tokens):
    logits, _, mask, ids = _random_batch(2)
    a = logits.clone().requires_grad_()
    fast = chunked_sequence_logps(a, ids, mask, chunk_tokens=chunk_tokens)
    (fast * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    b = logits.clone().requires_grad_()
    slow = sequence_logps(b, ids, mask)
    (slow * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
