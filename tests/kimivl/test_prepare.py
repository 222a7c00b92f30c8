"""``prepare_official``: an official Kimi-VL-A3B directory (tiktoken tokenizer, remote code) made loadable by
kvrl's learner, processor and vLLM without ``trust_remote_code``.

The fake official directory is the tiny checkpoint in the official layout (``write_official_layout``) with
the tokenizer the official way: ``tiktoken.model`` holding 768 BPE ranks (the tiny tokenizer's first ones
plus a few that tell split patterns apart), ``tokenizer_config.json`` with an ``added_tokens_decoder``
whose ids sit where the official ones do relative to the end of the ranks, a remote-code file that must
never run, and no ``tokenizer.json``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import torch
from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from kimivl.prepare import KIMI_PAT_STR, PrepareError, prepare_official
from kimivl.tiny import write_official_layout
from tests.helpers import ROOT, gradient_image

NUM_RANKS = 768  # + the 256 special/reserved ids = 1024, the tiny model's vocab_size
# Official ids (moonshotai/Kimi-VL-A3B-* tokenizer_config.json) minus 163584, the number of BPE ranks.
OFFICIAL_OFFSETS = {
    "[BOS]": 0,
    "[EOS]": 1,
    "<|im_end|>": 2,
    "<|im_user|>": 3,
    "<|im_assistant|>": 4,
    "<|start_header_id|>": 6,
    "<|end_header_id|>": 7,
    "[EOT]": 9,
    "<|im_system|>": 10,
    "<|im_middle|>": 17,
    "<|media_start|>": 18,
    "<|media_content|>": 19,
    "<|media_end|>": 20,
    "<|media_pad|>": 21,
    "[UNK]": 254,
    "[PAD]": 255,
}
SPECIAL_IDS = {token: NUM_RANKS + offset for token, offset in OFFICIAL_OFFSETS.items()}
# Tokens that straddle a split of transformers' default tiktoken pattern but not of Kimi's (" it's",
# "THEY'RE", "，世界"), or the other way round ("CamelCase"): with them, a wrong pattern changes ids.
CROSSING = ["t'", "Y'", "，世", "lC"]
TEXTS = [
    "Hello world, it's 12345 o'clock! We'll see; they'd've gone.",
    "I'M HERE. THEY'RE THERE. CamelCaseWord getHTTPResponse x2y3",
    "3.14159 + 2718281828 = 1000000 (approx), 007",
    "你好，世界！这道数学题的答案是 42。Kimi 模型",
    "  lots   of\n\n\tspace  \n \r\n  trailing   ",
    "emoji 😀👍🏽 and accents: naïve café Ωmega",
    "◁think▷ 7 * 6 = 42 ◁/think▷ The answer is 42.",
    "<|im_user|>user<|im_middle|>hi<|im_end|><|im_assistant|>assistant<|im_middle|>",
]


def write_fake_official(tiny_dir: Path, out: Path) -> dict[bytes, int]:
    """The fake official directory described in the module docstring -> the BPE ranks it holds."""
    write_official_layout(tiny_dir, out, shards=2)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    tiny = {bytes(to_byte[c] for c in token): i for token, i in vocab.items()}
    # Each CROSSING token is reachable by merging one byte at a time onto its prefix.
    extra = [w[:k] for w in (w.encode() for w in CROSSING) for k in range(2, len(w) + 1)]
    extra = [t for t in dict.fromkeys(extra) if t not in tiny]
    # The tiny ids below NUM_RANKS - len(extra) are a closed BPE prefix: each merge only uses lower ids.
    ranks = {token: i for token, i in tiny.items() if i < NUM_RANKS - len(extra)}
    ranks.update((token, i) for i, token in enumerate(extra, start=len(ranks)))
    lines = [
        base64.b64encode(token) + b" %d" % rank for token, rank in sorted(ranks.items(), key=lambda x: x[1])
    ]
    (out / "tiktoken.model").write_bytes(b"\n".join(lines) + b"\n")
    for name in ("tokenizer.json", "chat_template.jinja"):  # kvrl's files, which the official dir lacks
        (out / name).unlink()
    (out / "tokenization_moonshot.py").write_text("raise RuntimeError('remote code ran')\n")
    entry = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    tokenizer_config = {
        "added_tokens_decoder": {str(i): {"content": t, **entry} for t, i in SPECIAL_IDS.items()},
        "additional_special_tokens": ["<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_moonshot.TikTokenTokenizer", None]},
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "chat_template": "{{ 'upstream template, replaced by kvrl' }}",
        "model_max_length": 1048576,
        "tokenizer_class": "TikTokenTokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    config = json.loads((out / "config.json").read_text())
    config["media_placeholder_token_id"] = SPECIAL_IDS["<|media_pad|>"]
    config["text_config"].update(
        bos_token_id=SPECIAL_IDS["[BOS]"],
        eos_token_id=SPECIAL_IDS["[EOS]"],
        pad_token_id=SPECIAL_IDS["[PAD]"],
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": SPECIAL_IDS["[BOS]"], "eos_token_id": [SPECIAL_IDS["<|im_end|>"]]}
    (out / "generation_config.json").write_text(json.dumps(generation))
    return ranks


@pytest.fixture(scope="module")
def fake(tiny_dir, tmp_path_factory):
    src = tmp_path_factory.mktemp("official") / "Kimi-VL-A3B-fake"
    return src, write_fake_official(tiny_dir, src)


@pytest.fixture(scope="module")
def prepared(fake, tmp_path_factory):
    return prepare_official(fake[0], tmp_path_factory.mktemp("prepared") / "ckpt")


def chat(processor: KimiVLProcessor, text: str, num_images: int) -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def test_directory_contents(fake, prepared):
    src, _ = fake
    names = sorted(p.name for p in prepared.iterdir())
    assert names == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for name in names:
        is_weight = "safetensors" in name
        assert (prepared / name).is_symlink() == is_weight, name
        if is_weight:
            assert (prepared / name).resolve() == (src / name).resolve()
    assert "auto_map" not in json.loads((prepared / "tokenizer_config.json").read_text())


def test_tokenizer_matches_tiktoken_ids(fake, prepared):
    _, ranks = fake
    reference = tiktoken.Encoding(
        "kimi-fake", pat_str=KIMI_PAT_STR, mergeable_ranks=ranks, special_tokens=SPECIAL_IDS
    )
    default = tiktoken.Encoding(
        "default", pat_str=TikTokenConverter().pattern, mergeable_ranks=ranks, special_tokens={}
    )
    assert sum(default.encode(t) != reference.encode(t) for t in TEXTS[:-1]) >= 3, "TEXTS miss the pattern"
    tokenizer = KimiVLProcessor.from_pretrained(prepared).tokenizer
    assert len(tokenizer) == NUM_RANKS + 256
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == reference.encode(text, allowed_special="all"), text
        assert tokenizer.decode(ids) == text
    for token, i in SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == i, token
        assert tokenizer(token)["input_ids"] == [i], token
    assert tokenizer.convert_ids_to_tokens(NUM_RANKS + 5) == f"<|reserved_token_{NUM_RANKS + 5}|>"
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("[BOS]", "<|im_end|>")
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (SPECIAL_IDS["[PAD]"], SPECIAL_IDS["[UNK]"])


def test_split_pattern_is_kimis(prepared):
    """Pieces BPE never merges across, worked out by hand from the pattern: contractions stay on their
    word, CamelCase splits at capitals, Han runs split from punctuation and from Latin, digits by three."""
    tokenizer = KimiVLProcessor.from_pretrained(prepared).tokenizer
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
        " it's CamelCase 你好，世界Kimi 12345"
    )
    pieces = [bytes(to_byte[c] for c in piece).decode() for piece, _ in pieces]
    assert pieces == [" it's", " Camel", "Case", " ", "你好", "，", "世界", "Kimi", " ", "123", "45"]


def test_processor_chat_prompt(fake, prepared):
    processor = KimiVLProcessor.from_pretrained(prepared)
    upstream = json.loads((fake[0] / "preprocessor_config.json").read_text())
    assert processor.image_processor.in_token_limit == upstream["in_token_limit"]
    assert processor.image_processor.merge_kernel_size == upstream["merge_kernel_size"]
    prompt = chat(processor, "What is 7 * 6?", 1)
    assert prompt == (
        "<|im_user|>user<|im_middle|><|media_start|>image<|media_content|><|media_pad|><|media_end|>"
        "What is 7 * 6?<|im_end|><|im_assistant|>assistant<|im_middle|>"
    )
    enc = processor(text=prompt, images=[gradient_image(100, 60, 1)], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    for token in ("<|im_user|>", "<|im_middle|>", "<|media_start|>", "<|im_end|>", "<|im_assistant|>"):
        assert ids.count(SPECIAL_IDS[token]) == (2 if token == "<|im_middle|>" else 1), token
    (gh, gw), (kh, kw) = enc["image_grid_hws"][0].tolist(), processor.image_processor.merge_kernel_size
    assert ids.count(SPECIAL_IDS["<|media_pad|>"]) == (gh // kh) * (gw // kw)


def test_learner_loads_through_the_symlinks(fake, prepared):
    want = KimiVLForConditionalGeneration.from_pretrained(fake[0], dtype=torch.float32).state_dict()
    model, info = KimiVLForConditionalGeneration.from_pretrained(
        prepared, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info
    got = model.state_dict()
    assert got.keys() == want.keys()
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=0, atol=0, msg=name)
    assert model.config.media_placeholder_token_id == SPECIAL_IDS["<|media_pad|>"]


def _drop_line(path: Path, n: int, replacement: bytes | None = None) -> None:
    lines = path.read_bytes().splitlines()
    lines[n - 1 : n] = [] if replacement is None else [replacement]
    path.write_bytes(b"\n".join(lines) + b"\n")


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


BAD_INPUTS = {
    "no tiktoken.model": (lambda d: (d / "tiktoken.model").unlink(), r"tiktoken\.model: missing"),
    "bad base64": (
        lambda d: _drop_line(d / "tiktoken.model", 300, b"not*base64 299"),
        r"tiktoken\.model: line 300: expected '<base64 token> <rank>'",
    ),
    "no rank": (
        lambda d: _drop_line(d / "tiktoken.model", 5, base64.b64encode(b"\x04")),
        r"tiktoken\.model: line 5: expected",
    ),
    "rank gap": (lambda d: _drop_line(d / "tiktoken.model", 400), r"tiktoken\.model: ranks must be 0\.\.766"),
    "no tokenizer_config.json": (
        lambda d: (d / "tokenizer_config.json").unlink(),
        r"tokenizer_config\.json: missing",
    ),
    "tokenizer_config.json not JSON": (
        lambda d: (d / "tokenizer_config.json").write_text("{"),
        r"tokenizer_config\.json: not valid JSON",
    ),
    "special id inside the ranks": (
        lambda d: _edit_json(
            d / "tokenizer_config.json",
            lambda c: c["added_tokens_decoder"].update({"5": c["added_tokens_decoder"].pop("1023")}),
        ),
        r"tokenizer_config\.json: '\[PAD\]' has id 5, outside 768\.\.1023",
    ),
    "no <|media_pad|>": (
        lambda d: _edit_json(d / "tokenizer_config.json", lambda c: c["added_tokens_decoder"].pop("789")),
        r"tokenizer_config\.json: added_tokens_decoder lacks <\|media_pad\|>",
    ),
    "placeholder id differs": (
        lambda d: _edit_json(d / "config.json", lambda c: c.update(media_placeholder_token_id=7)),
        r"config\.json: media_placeholder_token_id is 7",
    ),
    "shard outside the checkpoint": (
        lambda d: _edit_json(
            d / "model.safetensors.index.json",
            lambda c: c["weight_map"].update({"x": "../model-00001-of-00002.safetensors"}),
        ),
        r"model\.safetensors\.index\.json: weight_map names '\.\./model",
    ),
    "missing shard": (
        lambda d: (d / "model-00002-of-00002.safetensors").unlink(),
        r"index\.json: weight_map names model-00002-of-00002\.safetensors, which is missing",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_checkpoint_names_the_file(fake, tmp_path, case):
    corrupt, message = BAD_INPUTS[case]
    src = shutil.copytree(fake[0], tmp_path / "src")
    corrupt(src)
    with pytest.raises(PrepareError, match=message):
        prepare_official(src, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "checked everything before writing"


VLLM_SCRIPT = """
import json, sys
from vllm import SamplingParams
from rollout.engine import EngineConfig, make_llm
from rollout.inputs import make_request
from tests.helpers import gradient_image

if __name__ == "__main__":
    model, out, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
    llm = make_llm(EngineConfig(model=model, max_model_len=512, max_num_seqs=2))
    request = make_request(prompt, [gradient_image(100, 60, 1)])
    params = SamplingParams(temperature=1.0, max_tokens=8, min_tokens=8, seed=0)
    (result,) = llm.generate([request], params, use_tqdm=False)
    response = result.outputs[0]
    json.dump([result.prompt_token_ids, list(response.token_ids), response.text], open(out, "w"))
"""


@pytest.mark.slow
def test_vllm_serves_the_prepared_directory(prepared, tmp_path):
    """vLLM (spawned engine, no remote code) loads the linked weights and the converted tokenizer, and
    its prompt ids, image placeholders expanded, equal kvrl's processor's."""
    processor = KimiVLProcessor.from_pretrained(prepared)
    prompt = chat(processor, "What is 7 * 6?", 1)
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_SCRIPT, str(prepared), str(out), prompt],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    prompt_ids, response_ids, text = json.loads(out.read_text())
    want = processor(text=prompt, images=[gradient_image(100, 60, 1)])["input_ids"][0]
    assert prompt_ids == want
    assert len(response_ids) == 8 and all(0 <= i < NUM_RANKS + 256 for i in response_ids)
    assert text == processor.decode(response_ids, skip_special_tokens=True)


def test_kvrl_prepare_command(fake, tmp_path):
    from kvrl.cli import main

    assert main(["prepare", "--model", str(fake[0]), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "tokenizer.json").is_file() and (tmp_path / "p" / "run_info.json").is_file()
    (fake_bad := tmp_path / "bad").mkdir()
    assert main(["prepare", "--model", str(fake_bad), "--out", str(tmp_path / "q")]) == 2  # names the file
    assert not (tmp_path / "q").exists()
