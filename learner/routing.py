"""Rollout routing replay (R3, arXiv 2510.11370) on the learner: the MoE layers route each token to the
experts the rollout engine chose for it, with gate weights from the learner's own router.

Kimi-VL's language model is DeepSeek-V3-style MoE; the learner runs transformers' ``DeepseekV3MoE``,
whose router (``DeepseekV3TopkRouter``) returns ``(router_logits, topk_weights, topk_indices)`` for the
flattened ``(B * L, hidden)`` tokens. A forward hook on each router replaces that output while a replay
is active: the indices become the recorded ones, and the weights are recomputed in DeepSeek-V3's form
from the router's own logits over those experts,

    w = sigmoid(logits)[recorded]  (without e_score_correction_bias, which only selects),
    w = w / (sum w + 1e-20)        if norm_topk_prob,
    w = w * routed_scaling_factor,

so the router still gets gradients (R3: the rollout's mask, the training logits). A token whose
recording is missing (-1: padding, the last position, a prefix the engine found in its cache) keeps
the router's own choice. No subclass and no fork of transformers' modeling file: the hook runs again
when gradient checkpointing recomputes a layer, as long as the replay is active through backward.
With expert parallelism (``learner/expert_parallel.py``) the routers are DeepSpeed AutoEP's, which
return ``(gates, indices, tokens_per_expert)``; a second hook on each one's ``gate`` keeps the logits,
and the replacement is the same.

Routes of one sample: ``kimivl/routes.py`` (uint8, ``NOT_ROUTED`` where nothing was recorded).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from kimivl.routes import NOT_ROUTED

ROUTER_CLASS = "DeepseekV3TopkRouter"
# DeepSpeed AutoEP's router (learner.expert_parallel): returns (gates, indices, tokens per expert) and
# computes its logits in a child ``gate`` (nn.Linear), whose output a second hook keeps for the replay
EP_ROUTER_CLASS = "TokenChoiceTopKRouter"


def moe_routers(model: nn.Module) -> list[nn.Module]:
    """The model's MoE routers in decoder order (one per MoE layer)."""
    return [m for m in model.modules() if type(m).__name__ in (ROUTER_CLASS, EP_ROUTER_CLASS)]


def _is_ep(router: nn.Module) -> bool:
    return type(router).__name__ == EP_ROUTER_CLASS


def replayed_gates(router: nn.Module, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, k) gate weights of ``indices`` (N, k) from the router's ``logits`` (N, E), DeepSeek-V3's form."""
    norm, scale = (
        (router.route_norm, router.route_scale)
        if _is_ep(router)
        else (router.norm_topk_prob, router.routed_scaling_factor)
    )
    weights = logits.float().sigmoid().gather(1, indices)
    if norm:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scale


class RoutingReplay:
    """Forward hooks on every MoE router of ``model``; they act only inside :meth:`active`.

    ``active(routes, replay)``: routes (B * L, moe_layers, top_k) integer tensor in the flattened row
    order the model sees (-1 where nothing was recorded). With ``replay`` the routers take them; without,
    they route as usual and the routes are only compared. Either way the hooks count how many recorded
    token-layer pairs name another expert set than the router's own choice (``disagreement``: per layer,
    a share). ``record()`` collects the indices the routers used, layer by layer.
    """

    def __init__(self, model: nn.Module):
        self.routers = moe_routers(model)
        self._routes: torch.Tensor | None = None
        self._replay = True
        self._recorded: list[torch.Tensor] | None = None
        self.differing = torch.zeros(len(self.routers), dtype=torch.float64)
        self.counted = torch.zeros(len(self.routers), dtype=torch.float64)
        self._logits: dict[int, torch.Tensor] = {}  # AutoEP routers: the gate's last logits
        # An AutoEP router's hook runs before ZeRO-3's own (prepend): ZeRO-3 then wraps the replayed
        # outputs for its backward fetch of the router, as it would the router's own. Run after it, the
        # replayed gates would bypass that wrapping on the ranks that replay, the ranks' module traces
        # would differ, and ZeRO-3 stops. The gate's logits are kept as ZeRO-3 wrapped them.
        self._handles = [
            r.register_forward_hook(self._hook(i), prepend=_is_ep(r)) for i, r in enumerate(self.routers)
        ]
        ep = [(i, r) for i, r in enumerate(self.routers) if _is_ep(r)]
        self._handles += [r.gate.register_forward_hook(self._keep_logits(i)) for i, r in ep]

    @contextmanager
    def record(self) -> Iterator[list[torch.Tensor]]:
        """The top-k indices the routers used in every forward inside (replayed ones when a replay is
        active), one (N, k) tensor per MoE layer and forward, in call order."""
        self._recorded = []
        try:
            yield self._recorded
        finally:
            self._recorded = None

    @contextmanager
    def active(self, routes: torch.Tensor | None, replay: bool = True) -> Iterator[None]:
        if routes is not None and routes.shape[1:] != (len(self.routers), self.top_k):
            raise ValueError(
                f"routes of shape {tuple(routes.shape)} for a model with {len(self.routers)} MoE layers of "
                f"top-{self.top_k}: expected (tokens, {len(self.routers)}, {self.top_k})"
            )
        self._routes, self._replay = routes, replay
        try:
            yield
        finally:
            self._routes = None

    @property
    def top_k(self) -> int:
        return self.routers[0].top_k if self.routers else 0

    def disagreement(self, reset: bool = True) -> list[float]:
        """Per MoE layer, the share of replayed tokens whose recorded expert set differs from the one the
        router chose itself, since the last reset."""
        out = (self.differing / self.counted.clamp(min=1)).tolist()
        if reset:
            self.differing.zero_()
            self.counted.zero_()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def _keep_logits(self, layer: int):
        def hook(gate: nn.Module, args, output):
            if self._routes is not None:
                self._logits[layer] = output

        return hook

    def _hook(self, layer: int):
        at = 1 if _is_ep(self.routers[layer]) else 2  # where the indices are in the router's output

        def hook(router: nn.Module, args, output):
            output = self._replace(layer, router, output)
            if self._recorded is not None:
                self._recorded.append(output[at].detach().clone())
            return output

        return hook

    def _replace(self, layer: int, router: nn.Module, output):
        if self._routes is None:
            return output
        ep = _is_ep(router)
        logits, own = (self._logits.pop(layer), output[1]) if ep else (output[0], output[2])
        recorded = self._routes[:, layer, :].to(device=own.device, dtype=torch.long)
        if recorded.shape[0] != own.shape[0]:
            raise ValueError(f"routes for {recorded.shape[0]} tokens, the layer routes {own.shape[0]}")
        valid = (recorded >= 0).all(dim=-1, keepdim=True)
        indices = torch.where(valid, recorded, own)
        with torch.no_grad():
            mine = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, own, True)
            theirs = torch.zeros_like(mine).scatter_(1, indices, True)
            rows = valid.squeeze(-1)
            self.differing[layer] += float((mine != theirs).any(dim=-1)[rows].sum())
            self.counted[layer] += float(rows.sum())
        if not self._replay:
            return output
        gates = replayed_gates(router, logits, indices)
        if ep:
            from deepspeed.moe.ep_count import count_tokens_per_expert

            return gates, indices, count_tokens_per_expert(indices, router.num_experts)
        return logits, gates.to(output[1].dtype), indices


def collate_routes(
    routes: Sequence[np.ndarray | None], width: int, offsets: Sequence[int] | None = None
) -> torch.Tensor | None:
    """(B * width, layers, k) int64 replay tensor for B right-padded rows of ``width`` tokens; sample b's
    routes start at column ``offsets[b]`` (0). -1 where a sample has none, where it was not routed, past
    its routes and on padding. None when no sample has routes."""
    present = [r for r in routes if r is not None and len(r)]
    if not present:
        return None
    layers, k = present[0].shape[1:]
    out = torch.full((len(routes), width, layers, k), -1, dtype=torch.long)
    for b, r in enumerate(routes):
        if r is None or not len(r):
            continue
        start = offsets[b] if offsets else 0
        n = min(len(r), width - start)
        rows = np.asarray(r[:n], dtype=np.int64)
        rows[rows == NOT_ROUTED] = -1
        out[b, start : start + n] = torch.from_numpy(rows)
    return out.view(-1, layers, k)
