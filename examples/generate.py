"""Generate with vLLM from a Kimi-VL directory on an image prompt: python examples/generate.py DIR"""

import sys

from PIL import Image
from vllm import SamplingParams

from kimivl import KimiVLProcessor
from rollout.engine import EngineConfig, make_llm
from rollout.inputs import make_request

if __name__ == "__main__":  # vLLM on CPU starts its engine in a spawned process
    model_dir = sys.argv[1]
    processor = KimiVLProcessor.from_pretrained(model_dir)
    image = Image.linear_gradient("L").convert("RGB").resize((96, 64))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    llm = make_llm(EngineConfig(model=model_dir, max_model_len=1024))
    (out,) = llm.generate([make_request(prompt, [image])], SamplingParams(max_tokens=32, logprobs=0))
    completion = out.outputs[0]
    print(f"prompt tokens: {len(out.prompt_token_ids)}  generated: {len(completion.token_ids)}")
    print(f"text: {completion.text!r}")
