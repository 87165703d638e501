import torch

from trace_engine.logprobs import sequence_logps, token_logps


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
