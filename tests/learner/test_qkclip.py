"""QK-clip (Kimi K2) on MLA: after a step, a head whose largest logit passed tau has it at tau on the same
batch; the other head, the values and the shared rotary key are untouched; the rescaling reaches
DeepSpeed's fp32 master weights (a later step does not undo it). One decoder layer, so the batch reaches
the attention with the same inputs before and after (deeper layers see inputs the clip has changed).
lr = 0: the optimizer moves nothing, so every change is the clip's.
"""

from __future__ import annotations

import math

import pytest
import torch

from kimivl.tiny import make_tiny
from learner import qkclip
from learner.packing import collate_packed, packed_logits
from learner.rank import Learner, LearnerConfig
from sft.loss import sft_loss
from tests.helpers import sft_rows


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("one-layer"), seed=0, num_hidden_layers=1)


def max_logits(learner: Learner, rows) -> torch.Tensor:
    """(H,) each head's largest logit on ``rows`` with the learner's current weights."""
    batch = collate_packed(rows, learner.pad_id).to(learner.device)
    with torch.no_grad(), qkclip.recording(learner.engine.module):
        packed_logits(learner.engine, batch)
    (top,) = qkclip.take_max_logits(learner.engine.module)
    return top.clone()


def attention_weights(learner: Learner) -> dict[str, torch.Tensor]:
    with learner._gathered():
        attn = qkclip.attention_layers(learner.engine.module)[0]
        return {
            "q": qkclip.query_weight(attn).detach().clone(),
            "kv_b": attn.kv_b_proj.weight.detach().clone(),
            "kv_a": attn.kv_a_proj_with_mqa.weight.detach().clone(),
            "o": attn.o_proj.weight.detach().clone(),
        }


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_qk_clip_brings_the_heads_above_tau_to_tau_and_leaves_the_rest(one_layer, single_rank, stage):
    rows = sft_rows()
    # qk_clip huge at first: on (recording), clipping nothing until tau is set between the two heads
    cfg = LearnerConfig(zero_stage=stage, lr=0.0, qk_clip=1e9, micro_batch_size=2)
    learner = Learner(str(one_layer), cfg)
    before, w0 = max_logits(learner, rows), attention_weights(learner)
    assert before.shape == (2,) and abs(float(before[0] - before[1])) > 1e-3, before
    hi = int(before.argmax())
    tau = float(before.mean())  # one head above, one below
    learner.cfg.qk_clip = tau

    out = learner.sft_step(rows, len(rows), 0.0, sft_loss)
    assert out["skipped"] == 0.0 and out["qk_clip_heads"] == 1.0
    assert out["max_logit"] == pytest.approx(float(before.max()), rel=1e-5)  # the step's own forwards

    after, w1 = max_logits(learner, rows), attention_weights(learner)
    assert float(after[hi]) == pytest.approx(tau, rel=1e-4)  # gamma * S_max = tau
    assert float(after[1 - hi]) == pytest.approx(float(before[1 - hi]), rel=1e-6)  # below tau: untouched
    gamma = tau / float(before[hi])
    attn = qkclip.attention_layers(learner.engine.module)[0]
    nope, rope, v = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    q0, q1 = w0["q"].view(2, nope + rope, -1), w1["q"].view(2, nope + rope, -1)
    kv0, kv1 = w0["kv_b"].view(2, nope + v, -1), w1["kv_b"].view(2, nope + v, -1)
    torch.testing.assert_close(q1[hi, :nope], q0[hi, :nope] * math.sqrt(gamma))  # non-rotary query
    torch.testing.assert_close(q1[hi, nope:], q0[hi, nope:] * gamma)  # rotary query
    torch.testing.assert_close(kv1[hi, :nope], kv0[hi, :nope] * math.sqrt(gamma))  # non-rotary key
    assert torch.equal(kv1[:, nope:], kv0[:, nope:])  # values
    assert torch.equal(q1[1 - hi], q0[1 - hi]) and torch.equal(kv1[1 - hi], kv0[1 - hi])
    assert torch.equal(w1["kv_a"], w0["kv_a"]) and torch.equal(w1["o"], w0["o"])  # shared rotary key

    # the next step (lr 0) writes DeepSpeed's master weights back into the module: they were rescaled too
    learner.cfg.qk_clip = 1e9
    learner.sft_step(rows, len(rows), 0.0, sft_loss)
    w2 = attention_weights(learner)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-7)


def test_qk_clip_is_checked_at_config_time():
    with pytest.raises(ValueError, match="qk_clip must be >= 0"):
        LearnerConfig(qk_clip=-1.0)
    with pytest.raises(ValueError, match="qk_clip needs zero_stage >= 1"):
        LearnerConfig(qk_clip=100.0, zero_stage=0)
