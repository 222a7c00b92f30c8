"""Kimi-VL for the learner: MoonViT -> projector -> DeepSeek-V3 (MLA + MoE) language model.

The text tower is transformers' ``DeepseekV3ForCausalLM``; kvrl writes only the vision tower, the
projector and the glue. Module names equal the official checkpoint's top-level prefixes
(``vision_tower``, ``multi_modal_projector``, ``language_model``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from transformers import DeepseekV3ForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration import KimiVLConfig
from .moonvit import MoonViT
from .weight_stream import official_tensors


class KimiVLProjector(nn.Module):
    """LayerNorm -> 2x2 merge (4x channels) -> Linear -> GELU -> Linear (Kimi-VL report, sec. 2.1)."""

    def __init__(self, config: KimiVLConfig):
        super().__init__()
        vision = config.vision_config
        kh, kw = vision.merge_kernel_size
        self.merged = vision.hidden_size * kh * kw
        self.pre_norm = nn.LayerNorm(vision.hidden_size, eps=1e-5)
        self.linear_1 = nn.Linear(self.merged, self.merged)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(self.merged, config.text_config.hidden_size)

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        # merged: (T, kh*kw, D) -> (T, text hidden)
        x = self.pre_norm(merged).reshape(-1, self.merged)
        return self.linear_2(self.act(self.linear_1(x)))


class KimiVLPreTrainedModel(PreTrainedModel):
    config_class = KimiVLConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeepseekV3DecoderLayer", "EncoderBlock"]
    _supports_sdpa = True
    _keep_in_fp32_modules_strict = ["e_score_correction_bias"]


class KimiVLForConditionalGeneration(KimiVLPreTrainedModel, GenerationMixin):
    def __init__(self, config: KimiVLConfig):
        super().__init__(config)
        self.vision_tower = MoonViT(config.vision_config)
        self.multi_modal_projector = KimiVLProjector(config)
        self.language_model = DeepseekV3ForCausalLM(config.text_config)
        # transformers fixes kv_a_layernorm's eps at 1e-6; vLLM (the rollout engine) uses rms_norm_eps.
        # The learner follows the engine, so rollout and learner log-probs agree.
        for layer in self.language_model.model.layers:
            layer.self_attn.kv_a_layernorm.variance_epsilon = config.text_config.rms_norm_eps
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def image_features(self, pixel_values: torch.Tensor, image_grid_hws: torch.Tensor) -> torch.Tensor:
        """(num_patches, 3, 14, 14) + (num_images, 2) -> (num_patches / 4, text hidden)."""
        dtype = self.vision_tower.patch_embed.proj.weight.dtype
        merged = self.vision_tower(pixel_values.to(dtype), image_grid_hws)
        return self.multi_modal_projector(merged)

    def _idle_vision_term(self) -> torch.Tensor:
        """0 x (the vision tower and projector on one blank 28x28 image).

        Data-parallel training needs every rank to use every parameter in every backward: ZeRO-2
        reduces gradients in buckets as they arrive and ZeRO-3 gathers parameters per module, so a
        rank whose micro-batch has no image must still run the vision path, at zero weight. Under
        ZeRO-3 forwards without gradient too (log-prob passes): each module's gather is a collective,
        so a rank that skipped the vision tower while another ran it would wait in the next gather.
        """
        weight = self.vision_tower.patch_embed.proj.weight
        pixels = torch.zeros(4, 3, 14, 14, dtype=weight.dtype, device=weight.device)
        grid = torch.tensor([[2, 2]], device=weight.device)
        return self.image_features(pixels, grid).sum() * 0.0

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_hws: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with each image placeholder row replaced by that image's features, in order.

        ``image_token_mask`` (B, L) marks the placeholder positions; by default every
        ``<|media_pad|>`` token is one. Training passes prompt positions only, since a sampled response
        may contain the token too (vLLM embeds those as plain tokens).
        """
        embeds = self.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.media_placeholder_token_id
        if image_token_mask is not None:
            is_image = is_image & image_token_mask.bool()
        num_slots = int(is_image.sum())
        if pixel_values is None:
            if num_slots:
                raise ValueError(f"input_ids hold {num_slots} image placeholder tokens but no pixel_values")
            partitioned = hasattr(self.vision_tower.patch_embed.proj.weight, "ds_id")  # ZeRO-3
            if partitioned or (self.training and torch.is_grad_enabled()):
                embeds = embeds + self._idle_vision_term()
            return embeds
        feats = self.image_features(pixel_values, image_grid_hws)
        if feats.shape[0] != num_slots:
            raise ValueError(
                f"input_ids hold {num_slots} image placeholder tokens but the images give "
                f"{feats.shape[0]} feature rows; expand each <|media_pad|> with the processor"
            )
        return embeds.masked_scatter(is_image[..., None], feats.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_hws: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_token_mask: torch.Tensor | None = None,
        hidden_states_only: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast | BaseModelOutputWithPast:
        """``hidden_states_only``: return the final (normed) hidden states and skip the LM head, for
        callers that compute logits a chunk of positions at a time (the learner, on long responses)."""
        if inputs_embeds is None:
            # Image features enter on the first (prefill) step only; cached decoding sees text ids.
            first_step = past_key_values is None or past_key_values.get_seq_length() == 0
            if not first_step:  # a sampled <|media_pad|> is a plain token, as in vLLM
                image_token_mask = torch.zeros_like(input_ids)
            inputs_embeds = self.embed(
                input_ids,
                pixel_values if first_step else None,
                image_grid_hws if first_step else None,
                image_token_mask,
            )
        if hidden_states_only:
            return self.language_model.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                **kwargs,
            )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def checkpoint_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs under the official checkpoint names, as vLLM's loader expects them
        (routed experts one by one: :func:`kimivl.weight_stream.official_tensors`). These are views."""
        for name, tensor in self.state_dict().items():
            yield from official_tensors(name, tensor)
