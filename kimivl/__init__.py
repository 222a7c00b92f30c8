"""The Kimi-VL model family for kvrl: config, learner model, processor, tiny-model factory.

Importing this package registers ``kimi_vl`` with transformers' Auto classes (config, model,
image processor, processor), so ``AutoModel*.from_pretrained`` and ``AutoProcessor.from_pretrained``
work on Kimi-VL directories without remote code.
"""

from .configuration import KimiVLConfig, MoonViTConfig
from .modeling import KimiVLForConditionalGeneration
from .processing import ImageInputError, KimiVLImageProcessor, KimiVLProcessor
from .registration import register

register()

__all__ = [
    "ImageInputError",
    "KimiVLConfig",
    "KimiVLForConditionalGeneration",
    "KimiVLImageProcessor",
    "KimiVLProcessor",
    "MoonViTConfig",
    "register",
]
