"""Configs of the Kimi-VL family (``model_type: kimi_vl``).

The field names follow the official Kimi-VL-A3B ``config.json`` so one directory loads in vLLM (which has
its own ``KimiVLConfig``) and in the learner. The text tower is a DeepSeek-V3 config (MLA + MoE).
"""

from __future__ import annotations

from transformers import DeepseekV3Config, PreTrainedConfig


class MoonViTConfig(PreTrainedConfig):
    """MoonViT, the native-resolution vision encoder of Kimi-VL (Kimi-VL report, sec. 2.1)."""

    model_type = "moonvit"

    patch_size: int = 14
    init_pos_emb_height: int = 64
    init_pos_emb_width: int = 64
    num_attention_heads: int = 16
    num_hidden_layers: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    merge_kernel_size: list[int] | tuple[int, int] = (2, 2)

    def __post_init__(self, **kwargs):
        self.merge_kernel_size = [int(k) for k in self.merge_kernel_size]
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision_config.hidden_size={self.hidden_size} is not divisible by "
                f"vision_config.num_attention_heads={self.num_attention_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError("vision_config head dim must be divisible by 4 (2D RoPE splits it in h/w pairs)")
        super().__post_init__(**kwargs)


class KimiVLConfig(PreTrainedConfig):
    """Top-level config: ``vision_config`` (MoonViT) + ``text_config`` (DeepSeek-V3 MLA/MoE)."""

    model_type = "kimi_vl"
    sub_configs = {"vision_config": MoonViTConfig, "text_config": DeepseekV3Config}

    vision_config: dict | MoonViTConfig | None = None
    text_config: dict | DeepseekV3Config | None = None
    ignore_index: int = -100
    media_placeholder_token_id: int = 163605
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = MoonViTConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = MoonViTConfig(**self.vision_config)
        if self.text_config is None:
            self.text_config = DeepseekV3Config()
        elif isinstance(self.text_config, dict):
            text = {k: v for k, v in self.text_config.items() if k != "model_type"}
            self.text_config = DeepseekV3Config(**text)
        super().__post_init__(**kwargs)
