"""Chunked log-probs (the learner's long-response path) equal the all-at-once ones, values and gradients."""

from __future__ import annotations

import torch

from learner.logprobs import gather_logprobs, head_logprobs


def test_chunked_head_logprobs_equal_whole_and_give_the_same_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    targets = torch.randint(0, 50, (2, 7))
    weights = torch.randn(2, 7)  # a loss that weighs every position differently

    grads = []
    for chunk in (0, 3):  # 14 positions in chunks of 3: the last chunk is short
        head.zero_grad()
        hidden.grad = None
        lp, ent = head_logprobs(hidden, targets, head, chunk)
        (lp * weights).sum().backward()
        grads.append((lp.detach(), ent, head.weight.grad.clone(), hidden.grad.clone()))
    (lp0, ent0, gw0, gh0), (lp3, ent3, gw3, gh3) = grads

    logits = head(hidden.detach()).float()
    expected = gather_logprobs(logits, targets)
    probs = logits.softmax(-1)
    assert torch.allclose(lp0, expected, atol=1e-6) and torch.allclose(lp3, expected, atol=1e-6)
    assert torch.allclose(ent3, -(probs * probs.log()).sum(-1), atol=1e-5) and torch.allclose(ent0, ent3)
    assert not ent3.requires_grad
    assert torch.allclose(gw0, gw3, atol=1e-6) and torch.allclose(gh0, gh3, atol=1e-6)
    assert gw3.abs().sum() > 0


def test_no_grad_path_and_empty_input():
    head = torch.nn.Linear(4, 6)
    with torch.no_grad():
        lp, ent = head_logprobs(torch.randn(1, 5, 4), torch.zeros(1, 5, dtype=torch.long), head, 2)
    assert lp.shape == ent.shape == (1, 5) and (lp <= 0).all()
    lp, _ = head_logprobs(torch.randn(3, 0, 4), torch.zeros(3, 0, dtype=torch.long), head, 2)
    assert lp.shape == (3, 0)
