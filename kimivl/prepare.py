"""Make an official Kimi-VL-A3B checkpoint directory loadable by kvrl without remote code.

The official directories (moonshotai/Kimi-VL-A3B-Instruct, -Thinking, -Thinking-2506) ship the tokenizer as
``tiktoken.model`` (BPE ranks) plus remote code (``tokenization_moonshot.py``), and the image processor as
remote code. :func:`prepare_official` writes a directory that the learner, :class:`KimiVLProcessor` and
vLLM all load with ``trust_remote_code=False``: the weights are symlinked, the tokenizer is converted to a
``tokenizer.json`` that encodes exactly as the upstream tiktoken one (same split pattern, same special-token
ids), and the processor is kvrl's with the upstream image settings.

Everything read from ``src`` is treated as untrusted: a missing or malformed file raises
:class:`PrepareError` naming the file (and the line, for ``tiktoken.model``).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from .processing import KimiVLImageProcessor, KimiVLProcessor
from .tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

log = logging.getLogger(__name__)

# The pre-tokenizer split regex of upstream ``tokenization_moonshot.py`` (``TikTokenTokenizer.pat_str``):
# runs of Han characters are split off first, then o200k-style cased-word pieces that exclude Han, with
# English contractions attached, digits in groups of up to three, punctuation runs, and whitespace.
# transformers' default tiktoken pattern differs (e.g. on " it's" and on CJK), so ids would not match.
KIMI_PAT_STR = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# Fields of the upstream preprocessor_config.json that mean the same in KimiVLImageProcessor.
IMAGE_FIELDS = ("patch_size", "merge_kernel_size", "in_token_limit", "pad_input", "image_mean", "image_std")


class PrepareError(ValueError):
    """An official checkpoint directory kvrl cannot use, with the file and the reason."""


def prepare_official(src: str | Path, out: str | Path) -> Path:
    """Write to ``out`` a kvrl-loadable view of the official Kimi-VL checkpoint directory ``src``.

    ``out`` gets: symlinks to ``src``'s weight files (``model.safetensors.index.json`` and the shards it
    names, or a single ``model.safetensors``); a copy of ``config.json`` and of ``generation_config.json``
    if present; ``tokenizer.json`` + ``tokenizer_config.json`` converted from ``tiktoken.model`` and
    ``tokenizer_config.json``'s ``added_tokens_decoder``; kvrl's ``chat_template.jinja``; and
    ``processor_config.json`` with the image settings of ``preprocessor_config.json``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise PrepareError(f"{src}: not a directory")
    if out.resolve() == src.resolve():
        raise PrepareError(f"{out}: the output directory must differ from the checkpoint directory")
    # Read and check everything first, so a bad checkpoint leaves no half-written directory behind.
    weights = weight_files(src)
    config = read_json(src / "config.json")
    text = config.get("text_config")
    vocab_size = text.get("vocab_size") if isinstance(text, dict) else None
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise PrepareError(
            f"{src / 'config.json'}: text_config.vocab_size is {vocab_size!r}, not a positive int"
        )
    tokenizer = convert_tokenizer(src, vocab_size, text.get("max_position_embeddings"))
    # The model swaps image features in at this id: a mismatch would silently drop every image.
    placeholder = config.get("media_placeholder_token_id")
    media_pad = tokenizer.convert_tokens_to_ids("<|media_pad|>")
    if placeholder != media_pad:
        raise PrepareError(
            f"{src / 'config.json'}: media_placeholder_token_id is {placeholder!r}, "
            f"but tokenizer_config.json gives <|media_pad|> id {media_pad}"
        )
    processor = KimiVLProcessor(image_processor(src / "preprocessor_config.json"), tokenizer, CHAT_TEMPLATE)
    copies = ["config.json"]
    if (src / "generation_config.json").exists():
        read_json(src / "generation_config.json")  # fail now, not at the first generate()
        copies.append("generation_config.json")

    out.mkdir(parents=True, exist_ok=True)
    for name in weights:  # links, not copies: the shards are large and only read
        link = out / name
        link.unlink(missing_ok=True)  # a re-run refreshes the links rather than failing
        link.symlink_to((src / name).resolve())
    processor.save_pretrained(out)
    for name in copies:
        shutil.copyfile(src / name, out / name)
    log.info("prepared %s at %s (%d weight files linked, vocab %d)", src, out, len(weights), len(tokenizer))
    return out


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PrepareError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrepareError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise PrepareError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def weight_files(src: Path) -> list[str]:
    """Names of the weight files of ``src``: the index and the shards it names, or ``model.safetensors``."""
    index = src / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise PrepareError(f"{index}: no 'weight_map'")
        shards = sorted({str(v) for v in weight_map.values()})
        for name in shards:
            # A name like "../x" would make the link point outside the checkpoint.
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise PrepareError(f"{index}: weight_map names {name!r}, not a .safetensors file in {src}")
            if not (src / name).is_file():
                raise PrepareError(f"{index}: weight_map names {name}, which is missing from {src}")
        names = [index.name, *shards]
    elif (src / "model.safetensors").is_file():
        names = ["model.safetensors"]
    else:
        raise PrepareError(f"{src}: no weights (model.safetensors.index.json or model.safetensors)")
    return names


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """The BPE ranks of a ``tiktoken.model``: one ``<base64 token> <rank>`` per line.

    Parsed here rather than with ``tiktoken.load`` so errors name the line, and because tiktoken caches
    files by path in a temp folder, which would serve a stale file after ``src`` changes.
    """
    if not path.is_file():
        raise PrepareError(f"{path}: missing (the official tokenizer's BPE ranks)")
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except ValueError as e:  # also binascii.Error
            raise PrepareError(
                f"{path}: line {n}: expected '<base64 token> <rank>', got {line[:80]!r}"
            ) from e
        if not token or token in ranks:
            raise PrepareError(f"{path}: line {n}: token {token!r} is empty or listed twice")
        ranks[token] = rank
    # Special-token ids start right after the ranks, so the ranks must be exactly 0..N-1.
    for expected, rank in enumerate(sorted(ranks.values())):
        if rank != expected:
            raise PrepareError(f"{path}: ranks must be 0..{len(ranks) - 1} once each; rank {expected} is not")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise PrepareError(f"{path}: {len(missing)} single bytes have no rank (first {missing[0]:#04x})")
    return ranks


class _RanksConverter(TikTokenConverter):
    """transformers' tiktoken -> tokenizers converter, fed ranks already read and checked."""

    def __init__(self, ranks: dict[bytes, int], pattern: str):
        super().__init__(pattern=pattern)
        self.ranks = ranks

    def load_tiktoken_bpe(self, _url: str) -> dict[bytes, int]:
        return self.ranks


def read_special_tokens(path: Path, first_id: int, vocab_size: int) -> list[AddedToken]:
    """Special tokens for ids ``first_id .. vocab_size-1``, from ``added_tokens_decoder`` in ``path``.

    Ids the file does not list get upstream's ``<|reserved_token_{id}|>`` names, so every id the model
    can emit still decodes (upstream fills the ids after the ranks the same way).
    """
    decoder = read_json(path).get("added_tokens_decoder")
    if not isinstance(decoder, dict) or not decoder:
        raise PrepareError(f"{path}: no 'added_tokens_decoder'")
    listed: dict[int, AddedToken] = {}
    for key, entry in decoder.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        try:
            i = int(key)
        except ValueError:
            i = None
        if i is None or not isinstance(content, str) or not content:
            raise PrepareError(
                f"{path}: added_tokens_decoder[{key!r}] is not an id -> {{'content': str}} entry"
            )
        if not first_id <= i < vocab_size:
            raise PrepareError(
                f"{path}: {content!r} has id {i}, outside {first_id}..{vocab_size - 1} (after the "
                f"{first_id} ranks of tiktoken.model, below config.json's vocab_size)"
            )
        listed[i] = AddedToken(content, special=bool(entry.get("special", True)), normalized=False)
    missing = sorted(set(SPECIAL_TOKENS) - {t.content for t in listed.values()})
    if missing:
        raise PrepareError(f"{path}: added_tokens_decoder lacks {', '.join(missing)}")
    reserved = [
        AddedToken(f"<|reserved_token_{i}|>", special=True, normalized=False) for i in range(vocab_size)
    ]
    return [listed.get(i, reserved[i]) for i in range(first_id, vocab_size)]


def convert_tokenizer(src: Path, vocab_size: int, max_length: int | None) -> PreTrainedTokenizerFast:
    """``src``'s tiktoken tokenizer as a fast tokenizer with the same ids (bos/eos/pad/unk as kvrl's tiny)."""
    ranks = read_tiktoken_ranks(src / "tiktoken.model")
    if len(ranks) >= vocab_size:
        raise PrepareError(
            f"{src / 'tiktoken.model'}: {len(ranks)} ranks leave no room below vocab_size {vocab_size}"
        )
    tok: Tokenizer = _RanksConverter(ranks, KIMI_PAT_STR).converted()
    config_path = src / "tokenizer_config.json"
    specials = read_special_tokens(config_path, len(ranks), vocab_size)
    tok.add_tokens(specials)  # ids are handed out in order after the ranks: exactly the listed ones
    for i, token in enumerate(specials, start=len(ranks)):
        if tok.token_to_id(token.content) != i:
            raise PrepareError(f"{config_path}: {token.content!r} is listed twice or is also a BPE token")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="<|im_end|>",  # the end of a chat turn, as in kimivl/tiny.py
        pad_token="[PAD]",
        unk_token="[UNK]",
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length if isinstance(max_length, int) else VERY_LARGE_INTEGER,
    )


def image_processor(path: Path) -> KimiVLImageProcessor:
    """kvrl's image processor with the settings of the upstream ``preprocessor_config.json``."""
    upstream = read_json(path)
    settings = {k: upstream[k] for k in IMAGE_FIELDS if k in upstream}
    if missing := [k for k in IMAGE_FIELDS if k not in settings]:
        log.warning("%s has no %s; using kvrl's defaults", path, ", ".join(missing))
    try:
        processor = KimiVLImageProcessor(**settings)
    except (TypeError, ValueError) as e:
        raise PrepareError(f"{path}: bad image settings {settings} ({e})") from e
    if (
        len(processor.merge_kernel_size) != 2
        or len(processor.image_mean) != 3
        or len(processor.image_std) != 3
    ):
        raise PrepareError(
            f"{path}: merge_kernel_size needs 2 values, image_mean and image_std 3: {settings}"
        )
    return processor
