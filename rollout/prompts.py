"""Chat prompts for problems: the Kimi-VL template with one image placeholder per image."""

from __future__ import annotations

from runkit.tokens import THINK_CLOSE, THINK_OPEN


def chat_prompt(processor, question: str, num_images: int = 0, thinking: bool = True) -> str:
    """The generation prompt for a user turn with ``num_images`` images before ``question``.

    ``thinking=False`` pre-fills an empty ``◁think▷◁/think▷`` so the model answers at once (Kimi k1.5's
    easy-to-hack filter and no-thinking evaluations).
    """
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return prompt if thinking else prompt + THINK_OPEN + THINK_CLOSE
