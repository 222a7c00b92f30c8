"""Registration of ``kimi_vl`` with transformers' Auto classes (idempotent)."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration import KimiVLConfig, MoonViTConfig
from .modeling import KimiVLForConditionalGeneration
from .processing import KimiVLImageProcessor, KimiVLProcessor


def register() -> None:
    AutoConfig.register("kimi_vl", KimiVLConfig, exist_ok=True)
    AutoConfig.register("moonvit", MoonViTConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        auto.register(KimiVLConfig, KimiVLForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(KimiVLConfig, slow_image_processor_class=KimiVLImageProcessor, exist_ok=True)
    AutoProcessor.register(KimiVLConfig, KimiVLProcessor, exist_ok=True)
