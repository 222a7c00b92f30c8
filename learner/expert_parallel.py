"""Expert parallelism for the routed experts (``learner.expert_parallel``), through DeepSpeed's AutoEP.

With ``expert_parallel: e`` (e > 1) DeepSpeed replaces each MoE block of the language model with an
``AutoEPMoELayer`` at ``deepspeed.initialize``: rank r of an EP group of e ranks holds experts
[r·E/e, (r+1)·E/e) whole, tokens go to their experts' ranks by all-to-all and come back the same way,
and the rest of the model (attention, dense and shared-expert MLPs, router, vision tower) stays under
ZeRO as before. Expert gradients are reduced only over the ranks that hold the same experts (the
expert-data-parallel group, N/e ranks), so with e = N they are not reduced at all.

AutoEP's ``deepseek_v3`` preset looks for ``model.layers.N.mlp`` and reads routing settings from the
top-level config, which for Kimi-VL is ``KimiVLConfig`` (the MoE fields live in its ``text_config``):
with nothing set it would route with ``route_norm`` false and a scale of 1.0. :func:`autoep_config`
names the layers and states every routing setting from the text config. AutoEP's router is
DeepSeek-V3's: sigmoid scores in fp32, ``e_score_correction_bias`` for the choice only, grouped top-k,
the unbiased scores of the chosen experts normalised and scaled; its gate matmul runs in the model's
dtype where transformers' runs in fp32, so a bf16 learner's router logits differ in their last bits.

AutoEP stores the experts as ``w1``, ``w3`` (gate, up: E/e × I × H) and ``w2`` (down: E/e × H × I)
and the router under ``router.gate``. Everything that leaves the learner (exports, the full state, the
streamed sync) sees the transformers layout instead: :func:`hf_layer_tensors` gathers a layer's
experts over its EP group and gives them back as ``gate_up_proj`` (E × 2I × H) and ``down_proj``.
Routing replay hooks AutoEP's router as it hooks transformers' (``learner/routing.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from learner.optim import full_shape

EP_LAYER = "AutoEPMoELayer"
# where Kimi-VL's decoder MLPs sit (the dense first layer has no experts; AutoEP leaves it)
MOE_PATTERN = r"language_model\.model\.layers\.\d+\.mlp"


def check_expert_parallel(size: int, ranks: int, experts: int) -> None:
    """``learner.expert_parallel`` must divide the learner ranks and the routed experts."""
    if size < 1:
        raise ValueError(f"learner.expert_parallel must be >= 1, got {size}")
    if size > 1 and (ranks % size or experts % size):
        raise ValueError(
            f"learner.expert_parallel={size} must divide the learner ranks ({ranks}) and the routed "
            f"experts ({experts})"
        )


def autoep_config(text_config, size: int) -> dict:
    """DeepSpeed's ``expert_parallel`` section for Kimi-VL's language model, every routing setting
    stated (AutoEP would read the top-level config, which has none of them)."""
    t = text_config
    if t.scoring_func != "sigmoid" or t.topk_method != "noaux_tc":
        raise ValueError(
            f"expert parallelism takes DeepSeek-V3 routing (sigmoid, noaux_tc); the model has "
            f"scoring_func={t.scoring_func!r}, topk_method={t.topk_method!r}"
        )
    return {
        "enabled": True,
        "autoep_size": size,
        "preset_model": "deepseek_v3",
        "moe_layer_pattern": MOE_PATTERN,
        "top_k": t.num_experts_per_tok,
        "score_func": "sigmoid",
        "route_norm": bool(t.norm_topk_prob),
        "routed_scaling_factor": float(t.routed_scaling_factor),
        "num_expert_groups": t.n_group,
        "num_limited_groups": t.topk_group,
        "use_grouped_mm": True,
    }


def is_ep_layer(module: nn.Module) -> bool:
    return type(module).__name__ == EP_LAYER


def ep_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if is_ep_layer(m)]


def _ep_gather(t: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The EP group's shards of ``t`` (E/e, ...) laid end to end in rank order: (E, ...). Collective
    over the layer's EP group."""
    import deepspeed.comm as dist

    if layer.ep_size == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(layer.ep_size)]
    dist.all_gather(parts, t.contiguous(), group=layer.ep_group)
    return torch.cat(parts)


def hf_layer_tensors(prefix: str, layer: nn.Module, meta: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """An AutoEP layer's tensors under transformers' ``DeepseekV3MoE`` names, in its state-dict
    order: the router, the experts whole (gathered over the EP group: collective, every rank of the
    group must call it; ZeRO-3 parameters must be gathered first), the shared experts. ``meta``:
    empty stand-ins of the full shapes instead, no communication."""
    router, experts = layer.router, layer.experts
    lead = f"{prefix}." if prefix else ""
    yield f"{lead}gate.weight", _meta(router.gate.weight) if meta else router.gate.weight
    yield f"{lead}gate.e_score_correction_bias", router.e_score_correction_bias
    if meta:
        e, i, h = full_shape(experts.w1)
        dtype = experts.w1.dtype
        e *= layer.ep_size
        yield f"{lead}experts.gate_up_proj", torch.empty(e, 2 * i, h, dtype=dtype, device="meta")
        yield f"{lead}experts.down_proj", torch.empty(e, h, i, dtype=dtype, device="meta")
    else:
        w1, w2, w3 = (_ep_gather(w.detach(), layer) for w in (experts.w1, experts.w2, experts.w3))
        yield f"{lead}experts.gate_up_proj", torch.cat([w1, w3], dim=1)
        yield f"{lead}experts.down_proj", w2
    shared = getattr(layer, "shared_experts", None)
    if shared is not None:
        for name, p in shared.named_parameters():
            yield f"{lead}shared_experts.{name}", _meta(p) if meta else p


def _meta(p: torch.Tensor) -> torch.Tensor:
    return torch.empty(full_shape(p), dtype=p.dtype, device="meta")


def hf_state(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of ``model`` under transformers' names: ``model.state_dict()``'s items,
    each AutoEP layer given back in the ``DeepseekV3MoE`` layout where its first entry was. Its
    parameters must be whole (inside ZeRO-3's ``GatheredParameters``). Collective where the model has
    AutoEP layers: every rank must walk it."""
    layers = dict(ep_layers(model))
    done: set[str] = set()
    for name, tensor in model.state_dict().items():
        owner = next((p for p in layers if name.startswith(f"{p}.")), None)
        if owner is None:
            yield name, tensor
        elif owner not in done:
            done.add(owner)
            yield from hf_layer_tensors(owner, layers[owner])


def moe_groups(make_optimizer: Callable[[list[dict]], torch.optim.Optimizer]):
    """An optimizer factory for ``deepspeed.initialize`` (which calls it with the parameters AutoEP
    leaves): one group, split into DeepSpeed's MoE groups, the experts apart, so ZeRO reduces their
    gradients over the ranks that hold the same experts only."""

    def build(params) -> torch.optim.Optimizer:
        from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

        groups = [{"name": "dense", "params": list(params)}]
        return make_optimizer(split_params_into_different_moe_groups_for_optimizer(groups))

    return build
