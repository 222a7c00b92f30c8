"""The learner's optimizer: AdamW, or Muon scaled as Moonlight scales it, through DeepSpeed. No Ray here.

Kimi-VL was trained with Muon for every matrix in every stage (Kimi-VL report §2.2; Moonlight, Liu et
al. 2025, eq. 4): for an A x B matrix W with momentum M,

    W <- W - lr * (0.2 * sqrt(max(A, B)) * NS(M) + wd * W)

where NS orthogonalizes (Newton-Schulz, 5 steps). The 0.2 * sqrt(max(A, B)) makes the update's RMS
match AdamW's, so Muon's matrices and AdamW's other parameters share one lr and one weight decay.

kvrl uses DeepSpeed 0.19's Muon (``"optimizer": {"type": "Muon"}``, ``deepspeed/runtime/zero/muon/``),
which runs Newton-Schulz on whole matrices under ZeRO-1/2/3 and an auxiliary AdamW for the rest. Its
rule for which parameters Muon takes (``deepspeed.set_optimizer_flags``, applied to every parameter):
2 or more dimensions and no ``embed`` or ``lm_head`` in the name. On Kimi-VL that is every linear
layer of the language model (attention, dense and shared-expert MLPs, the router), of the vision tower
and of the projector; the token, patch and position embeddings, the LM head, norms and biases go to
AdamW. Routed experts are one (E, out, in) tensor per layer in transformers; DeepSpeed orthogonalizes
it per expert (its Newton-Schulz is batched over the leading dimension). transformers fuses each
expert's gate and up projections into one (2 * I, H) matrix, which is orthogonalized as one; Kimi-VL's
checkpoint keeps them as two (a departure, see :func:`muon_scale`).

DeepSpeed scales NS(M) by sqrt(max(1, A / B)) (Keller Jordan's rule) and decays each weight by its
group's lr x wd. So kvrl puts each matrix shape in its own param group with lr x s and wd / s,
s = 0.2 * sqrt(max(A, B)) / sqrt(max(1, A / B)), which gives Moonlight's update exactly
(``tests/actors/test_muon.py`` checks two steps on 2 ranks against ``torch.optim.Muon`` with
``adjust_lr_fn="match_rms_adamw"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

MUON_EXCLUDED = ("embed", "lm_head")  # name parts DeepSpeed keeps on AdamW, whatever the shape
ADAM_GROUP = "adam"


def full_shape(p: torch.nn.Parameter) -> torch.Size:
    """A parameter's shape, whole: under ZeRO-3 (``zero.Init``) its own is its shard's placeholder."""
    return torch.Size(getattr(p, "ds_shape", p.shape))


def takes_muon(name: str, shape: Iterable[int]) -> bool:
    """Whether Muon trains this parameter (DeepSpeed's rule, which it applies to every parameter)."""
    return len(tuple(shape)) >= 2 and not any(part in name.lower() for part in MUON_EXCLUDED)


def muon_scale(shape: Iterable[int]) -> float:
    """Moonlight's 0.2 * sqrt(max(A, B)) over DeepSpeed's sqrt(max(1, A / B)), A x B = the last two dims.

    A 3-D tensor is a stack of matrices (routed experts), each A x B. The fused (2 * I, H) gate-and-up
    matrix of an expert is taken as one matrix of that shape, as DeepSpeed orthogonalizes it.
    """
    *_, a, b = tuple(shape)
    return 0.2 * math.sqrt(max(a, b)) / math.sqrt(max(1.0, a / b))


def muon_optimizer_config(
    *, lr: float, weight_decay: float, momentum: float, betas: Iterable[float], eps: float
) -> dict:
    """DeepSpeed's ``optimizer`` section. ``standard``: the quintic Newton-Schulz in bf16 (as
    ``torch.optim.Muon``); ``torch_adam``: the auxiliary AdamW is torch's (no JIT-built op). DeepSpeed
    fixes Nesterov momentum and 5 Newton-Schulz steps."""
    return {
        "type": "Muon",
        "params": {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "betas": list(betas),
            "eps": eps,
            "ns_method": "standard",
            "torch_adam": True,
        },
    }


def muon_param_groups(
    model: torch.nn.Module, weight_decay: float, adamw_lr_ratio: float = 1.0
) -> tuple[list[dict], dict[str, float]]:
    """Param groups for DeepSpeed's Muon: one per matrix shape (weight decay wd / s) and one for AdamW;
    and the lr multiplier of each group under the name DeepSpeed gives it: s for Muon's
    (``NAME-muon-params``), ``adamw_lr_ratio`` for AdamW's (``learner.muon_adamw_lr_ratio``)."""
    by_shape: dict[tuple[int, int], list[torch.nn.Parameter]] = {}
    adam: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = full_shape(p)
        if takes_muon(name, shape):
            by_shape.setdefault(tuple(shape[-2:]), []).append(p)
        else:
            adam.append(p)
    groups, scales = [], {}
    for (a, b), params in sorted(by_shape.items()):
        s = muon_scale((a, b))
        name = f"muon{a}x{b}"
        groups.append({"params": params, "name": name, "weight_decay": weight_decay / s})
        scales[f"{name}-muon-params"] = s
    if adam:
        groups.append({"params": adam, "name": ADAM_GROUP, "weight_decay": weight_decay})
        scales[f"{ADAM_GROUP}-adam-params"] = adamw_lr_ratio
    return groups, scales


def check_groups(param_groups: list[dict], scales: dict[str, float]) -> None:
    """DeepSpeed split the groups as :func:`muon_param_groups` meant (its rule is ours): every group
    is one of ours, Muon's named as Muon's. Raises otherwise: the lrs would be wrong."""
    names = [g.get("name") for g in param_groups]
    ours = set(scales) | {f"{ADAM_GROUP}-adam-params"}
    stray = [n for n in names if n not in ours]
    if stray:
        raise RuntimeError(
            f"DeepSpeed's Muon made param groups {stray} that kvrl did not plan (its rule for which "
            f"parameters Muon takes differs from learner/optim.py takes_muon)"
        )


def optimizer_summary(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """Tensors and parameters per optimizer, by :func:`takes_muon` (logged at start)."""
    out = {"muon": {"tensors": 0, "parameters": 0}, "adamw": {"tensors": 0, "parameters": 0}}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = out["muon" if takes_muon(name, full_shape(p)) else "adamw"]
            kind["tensors"] += 1
            kind["parameters"] += int(full_shape(p).numel())
    return out
