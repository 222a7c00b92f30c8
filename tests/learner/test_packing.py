"""Loss masking and packing on the tiny Kimi-VL: assistant tokens only, and packing changes nothing."""

from __future__ import annotations

import pytest
import torch

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from learner.packing import collate_packed, packed_logits
from sft.data import Conversation
from sft.format import encode
from sft.loss import sft_loss
from sft.packing import pack
from tests.helpers import gradient_image


def conv(cid: str, question: str, answer: str, images=(), system: str | None = None) -> Conversation:
    user = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return Conversation(cid, messages, list(images))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    torch.manual_seed(0)
    model = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return model, KimiVLProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def examples(tiny):
    _, processor = tiny
    return [
        encode(processor, conv("a", "What is 2+3?", "◁think▷2 plus 3 is 5.◁/think▷5", system="Be brief.")),
        encode(
            processor, conv("b", "Colour?", "◁think▷The picture is red.◁/think▷red", [gradient_image(60, 40)])
        ),
        encode(processor, conv("c", "Say hi", "hi")),
        encode(processor, conv("d", "Two pictures?", "◁think▷two◁/think▷2", [gradient_image(30, 30, 1)] * 2)),
    ]


def _loss(model, batch, normalizer):
    return sft_loss(packed_logits(model, batch), batch.targets, batch.loss_mask, normalizer)[0]


def test_mask_covers_assistant_content_and_end_only(tiny, examples):
    _, processor = tiny
    tok = processor.tokenizer
    ex = examples[0]
    full = processor.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "◁think▷2 plus 3 is 5.◁/think▷5"},
        ]
    )
    # Tokenizing message by message gives the same ids as the whole rendered conversation.
    assert ex.input_ids == tok(full, add_special_tokens=False)["input_ids"]
    trained = tok.decode([t for t, m in zip(ex.input_ids, ex.labels_mask, strict=True) if m])
    assert trained == "◁think▷2 plus 3 is 5.◁/think▷5<|im_end|>"
    # Image conversations: the placeholder is expanded to one token per merged patch, none trained.
    pad = processor.tokenizer.convert_tokens_to_ids("<|media_pad|>")
    img = examples[1]
    assert sum(t == pad for t in img.input_ids) == img.pixel_values.shape[0] // 4
    assert not any(m for t, m in zip(img.input_ids, img.labels_mask, strict=True) if t == pad)


def test_masked_tokens_get_zero_gradient(tiny, examples):
    model, _ = tiny
    batch = collate_packed([examples[:2]], pad_id=0)
    logits = packed_logits(model, batch).detach().requires_grad_(True)
    loss, _ = sft_loss(logits, batch.targets, batch.loss_mask, batch.num_targets)
    loss.backward()
    per_position = logits.grad.abs().sum(-1)[0]  # (L,)
    masked = batch.loss_mask[0] == 0
    assert masked.sum() > 20 and (~masked).sum() > 10
    assert per_position[masked].max() == 0.0  # system, user, image and header tokens: exactly zero
    assert per_position[~masked].min() > 0.0
    # And in the weights: a loss over masked positions only would be the one to move them; ours leaves
    # the gradient unchanged when the masked targets change.
    batch2 = collate_packed([examples[:2]], pad_id=0)
    batch2.targets[0, masked] = (batch2.targets[0, masked] + 7) % 1000
    model.zero_grad()
    _loss(model, batch, batch.num_targets).backward()
    g1 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    _loss(model, batch2, batch.num_targets).backward()
    g2 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_packed_loss_equals_unpacked(tiny, examples):
    model, _ = tiny
    total = sum(e.num_targets for e in examples)
    with torch.no_grad():
        packed = collate_packed([examples], pad_id=0)
        unpacked = collate_packed([[e] for e in examples], pad_id=0)
        assert packed.input_ids.shape[0] == 1 and unpacked.input_ids.shape[0] == 4
        assert packed.num_targets == unpacked.num_targets == total
        a = _loss(model, packed, total)
        b = _loss(model, unpacked, total)
        two_rows = collate_packed([examples[:2], examples[2:]], pad_id=0)  # padding inside a batch
        c = _loss(model, two_rows, total)
        # Negative control: a plain causal mask (no position resets) lets examples see each other.
        logits = model(
            input_ids=packed.input_ids,
            pixel_values=packed.pixel_values,
            image_grid_hws=packed.image_grid_hws,
            use_cache=False,
        ).logits
        leaky = sft_loss(logits, packed.targets, packed.loss_mask, total)[0]
    print(f"PACKED {a.item():.8f} UNPACKED {b.item():.8f} TWO-ROWS {c.item():.8f} LEAKY {leaky.item():.8f}")
    assert abs(a.item() - b.item()) < 1e-5
    assert abs(c.item() - b.item()) < 1e-5
    assert abs(leaky.item() - b.item()) > 1e-3


def test_pack_first_fit_decreasing():
    # sizes 5,4,3,3,2,1 into capacity 8: 5+3, 4+3+1, 2 -> by FFD: [0,2], [1,3,5], [4]
    assert pack([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    assert pack([9, 1], 8) == [[0], [1]]  # too long for any bin: a bin of its own
    bins = pack([3, 7, 2, 5, 5, 1, 4], 10)
    assert sorted(i for b in bins for i in b) == list(range(7))
    with pytest.raises(ValueError, match="capacity"):
        pack([1], 0)


def test_empty_row_pads_a_shard_with_no_targets():
    batch = collate_packed([[]], pad_id=3)
    assert batch.input_ids.tolist() == [[3]] and batch.num_targets == 0
