import pytest
import torch

from trace_engine.logprobs import SequenceBatch, sequence_logps, token_logps


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
