"""A checkpoint in the official Kimi-VL-A3B layout loads in the learner and in vLLM (issue #10 item 5).

The official directories (moonshotai/Kimi-VL-A3B-Instruct, -Thinking, -Thinking-2506) hold a
transformers-4.x ``config.json`` whose ``auto_map`` points at remote code, bfloat16 weights sharded under
``model.safetensors.index.json`` and a remote-code ``preprocessor_config.json``. ``write_official_layout``
writes the tiny model exactly that way (with kvrl's tokenizer files: the official one is tiktoken).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoProcessor

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from kimivl.tiny import OFFICIAL_TEXT_FIELDS, TINY_VISION, write_official_layout
from learner.logprobs import response_logprobs
from tests.helpers import ROOT, gradient_image

SHARDS = 3
TOLERANCE = 1e-4  # fp32 engine and learner on the same bf16 weights, max abs log-prob difference


@pytest.fixture(scope="module")
def official_dir(tiny_dir, tmp_path_factory):
    return write_official_layout(tiny_dir, tmp_path_factory.mktemp("official") / "ckpt", shards=SHARDS)


@pytest.fixture(scope="module")
def official_model(official_dir):
    # The call learner/rank.py makes (dtype float32 on CPU).
    return KimiVLForConditionalGeneration.from_pretrained(official_dir, dtype=torch.float32).eval()


def chat(processor: KimiVLProcessor, text: str, num_images: int) -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def test_directory_is_in_the_official_layout(official_dir):
    """The writer itself: without this, the loading tests below could pass on a kvrl-style directory."""
    config = json.loads((official_dir / "config.json").read_text())
    assert config["architectures"] == ["KimiVLForConditionalGeneration"]
    assert config["auto_map"]["AutoConfig"] == "configuration_kimi_vl.KimiVLConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_kimi_vl.KimiVLForConditionalGeneration"
    assert (config["model_type"], config["torch_dtype"]) == ("kimi_vl", "bfloat16")
    assert "dtype" not in config and config["transformers_version"].startswith("4.")
    text, vision = config["text_config"], config["vision_config"]
    assert text["model_type"] == "deepseek_v3" and vision["model_type"] == "moonvit"
    # transformers 4.x names: rope_theta / rope_scaling, not 5.x's rope_parameters
    assert (text["rope_theta"], text["rope_scaling"]) == (800000.0, None) and "rope_parameters" not in text
    assert (text["kv_lora_rank"], text["qk_rope_head_dim"], text["q_lora_rank"]) == (512, 64, None)
    preprocessor = json.loads((official_dir / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"]["AutoProcessor"] == "processing_kimi_vl.KimiVLProcessor"
    assert not (official_dir / "model.safetensors").exists()

    index = json.loads((official_dir / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    files = sorted(p.name for p in official_dir.glob("*.safetensors"))
    assert files == [f"model-{k:05d}-of-{SHARDS:05d}.safetensors" for k in range(1, SHARDS + 1)]
    total = 0
    for file in files:
        with safe_open(official_dir / file, "pt") as f:
            names = set(f.keys())
            assert names and names == {n for n, shard in weight_map.items() if shard == file}
            for name in names:
                t = f.get_tensor(name)
                assert t.dtype == torch.bfloat16, name
                total += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == total
    assert {n.split(".")[0] for n in weight_map} == {
        "language_model",
        "vision_tower",
        "multi_modal_projector",
    }
    assert "language_model.lm_head.weight" in weight_map
    # One expert's matrices sit in different shards: loaders must gather a fused expert across files.
    expert = "language_model.model.layers.1.mlp.experts.0."
    assert len({weight_map[f"{expert}{m}.weight"] for m in ("gate_proj", "up_proj", "down_proj")}) > 1


def test_learner_loads_every_tensor(tiny_dir, official_dir):
    source = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
    model, info = KimiVLForConditionalGeneration.from_pretrained(
        official_dir, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    ours, theirs = model.state_dict(), source.state_dict()
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert ours[name].dtype == torch.float32, name
        torch.testing.assert_close(ours[name], t.to(torch.bfloat16).float(), rtol=0, atol=0, msg=name)
    # The weights really came through the bfloat16 files (random float32 values are not bf16-exact).
    assert not torch.equal(ours["language_model.lm_head.weight"], theirs["language_model.lm_head.weight"])

    text, src_text = model.config.text_config, source.config.text_config
    for key in OFFICIAL_TEXT_FIELDS:
        assert getattr(text, key) == getattr(src_text, key), key
    assert text.rope_parameters == src_text.rope_parameters  # rope_theta under its 4.x name is honored
    for key in TINY_VISION:
        assert getattr(model.config.vision_config, key) == getattr(source.config.vision_config, key), key
    assert model.config.media_placeholder_token_id == source.config.media_placeholder_token_id
    assert model.config.pad_token_id == source.config.pad_token_id


def test_auto_dtype_follows_the_checkpoint_bfloat16(official_dir):
    model = KimiVLForConditionalGeneration.from_pretrained(official_dir, dtype="auto")
    assert model.language_model.lm_head.weight.dtype == torch.bfloat16
    assert model.vision_tower.patch_embed.proj.weight.dtype == torch.bfloat16


def test_config_and_processor_load_without_remote_code(tiny_dir, official_dir):
    """The auto_map entries name remote code; registered classes must win, with no prompt.

    (Which ``KimiVLConfig`` AutoConfig gives depends on the process: once vLLM has read a kimi_vl
    config it registers its own class. Either is fine here: neither needs remote code.)
    """
    assert AutoConfig.from_pretrained(official_dir, trust_remote_code=False).model_type == "kimi_vl"
    source = KimiVLProcessor.from_pretrained(tiny_dir)
    prompt = chat(source, "What is 12 + 30?", 1)
    image = gradient_image(100, 60, 1)
    want = source(text=prompt, images=[image], return_tensors="pt")
    for processor in (
        KimiVLProcessor.from_pretrained(official_dir),  # learner/rank.py's call
        AutoProcessor.from_pretrained(official_dir, trust_remote_code=False),  # vLLM's
    ):
        assert type(processor) is KimiVLProcessor
        assert processor.image_processor.in_token_limit == source.image_processor.in_token_limit
        got = processor(text=prompt, images=[image], return_tensors="pt")
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


VLLM_SCRIPT = """
import json, sys
from vllm import SamplingParams
from rollout.engine import EngineConfig, make_llm, to_samples
from rollout.inputs import make_request
from tests.helpers import gradient_image

if __name__ == "__main__":
    model, out, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    llm = make_llm(EngineConfig(model=model, max_model_len=512, max_num_seqs=4))
    requests = [make_request(text, [gradient_image(*im) for im in images]) for text, images in prompts]
    params = SamplingParams(temperature=1.0, max_tokens=16, min_tokens=16, logprobs=0, seed=0)
    samples = [s for (s,) in to_samples(llm.generate(requests, params, use_tqdm=False))]
    rows = [[s.prompt_token_ids, s.response_token_ids, s.logprobs] for s in samples]
    open(out, "w").write(json.dumps(rows))
"""


@pytest.mark.slow
def test_vllm_serves_it_with_the_learners_logprobs(
    tiny_dir, official_dir, official_model, tmp_path, record_property
):
    """vLLM loads the sharded bf16 directory (in a spawned engine) and samples tokens whose log-probs
    equal the learner's on the same directory: a weight vLLM skipped or misread would show here.

    Measured: 2e-6 against the learner on this directory; 1e-2 against the float32 model it was written
    from, so the tolerance tells even bf16 rounding apart.
    """
    source = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    processor = KimiVLProcessor.from_pretrained(official_dir)
    prompts = [
        (chat(processor, "What is 7 * 6?", 1), [(100, 60, 1)]),
        (chat(processor, "Count the shapes.", 0), []),
    ]
    out = tmp_path / "samples.json"
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_SCRIPT, str(official_dir), str(out), json.dumps(prompts)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    rows = []  # (prompt ids, response ids, pixel_values, image_grid_hws, vLLM log-probs)
    for (prompt, images), (prompt_ids, response_ids, logprobs) in zip(
        prompts, json.loads(out.read_text()), strict=True
    ):
        assert len(response_ids) == 16
        pil = [gradient_image(*im) for im in images]
        enc = processor(text=prompt, images=pil or None, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == prompt_ids, "processor and vLLM disagree on prompt ids"
        rows.append((prompt_ids, response_ids, enc.get("pixel_values"), enc.get("image_grid_hws"), logprobs))

    def gap(model) -> float:
        """max |logp_vllm - logp_model| over every sampled token."""
        with torch.no_grad():
            return max(
                (response_logprobs(model, *r[:4]) - torch.tensor(r[4])).abs().max().item() for r in rows
            )

    worst = gap(official_model)
    record_property("official_layout_parity_max_abs_diff", worst)
    assert worst <= TOLERANCE, f"max |logp_vllm - logp_learner| = {worst:.3g}"
    assert gap(source) > 10 * TOLERANCE, "vLLM matches the unrounded float32 model: not the bf16 files?"
