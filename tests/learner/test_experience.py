"""Collation: right padding, response positions in the shifted rows, prompt mask, forced tokens masked."""

from __future__ import annotations

import torch

from learner.experience import Experience, collate


def test_collate_layout():
    a = Experience([1, 2, 3], [4, 5], old_logprobs=[-0.1, -0.2])
    b = Experience([6], [7, 8, 9], old_logprobs=[-0.3, -0.4, -0.5], forced=[1])
    c = collate([a, b], pad_id=0)
    assert c.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert c.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert c.prompt_mask.tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
    # shifted row t predicts token t + 1: a's response tokens sit at rows 2, 3; b's at rows 0, 1, 2
    assert c.response_index.tolist() == [[2, 3, 0], [0, 1, 2]]
    # b's token 1 was forced by the thinking budget: no loss on it
    assert c.response_mask.tolist() == [[1, 1, 0], [1, 0, 1]]
    torch.testing.assert_close(c.old_logprobs, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, -0.4, -0.5]]))


def test_by_length_orders_shortest_first_and_is_stable():
    from learner.experience import Experience, by_length

    lengths = [(3, 5), (3, 1), (1, 1), (3, 5), (2, 0)]  # (prompt, response) tokens: totals 8, 4, 2, 8, 2
    samples = [Experience([0] * p, [1] * r) for p, r in lengths]
    assert by_length(samples) == [2, 4, 1, 0, 3]  # equal totals keep their order
