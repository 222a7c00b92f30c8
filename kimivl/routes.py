"""Routing records of Kimi-VL's MoE layers: which experts each token went to, in the form the rollout
engine records them (``rollout/routing.py``) and the learner replays them (``learner/routing.py``).

A sample's routes are a ``(positions, moe_layers, top_k)`` uint8 array: position p is the token at p of
prompt + response (image placeholders included), layers are the MoE layers in decoder order, and
``NOT_ROUTED`` (255) marks a position no forward computed (a prefix the engine found in its cache, the
last token, which is never an input). uint8 holds expert ids below 255: Kimi-VL-A3B has 64 experts, 6
active, in 26 MoE layers, so a token's routing takes 156 bytes and a 32K-token response about 5 MB.
"""

from __future__ import annotations

import base64

import numpy as np

NOT_ROUTED = 255


def merge_routes(first: np.ndarray | None, later: np.ndarray | None) -> np.ndarray | None:
    """``first``'s positions where it has them, ``later``'s elsewhere (keep-first): a position routed
    when its token was sampled keeps that routing after a continuation recomputes it under new weights."""
    if first is None or not len(first):
        return later
    if later is None or not len(later):
        return first
    out = np.full((max(len(first), len(later)), *first.shape[1:]), NOT_ROUTED, dtype=np.uint8)
    out[: len(later)] = later
    have = (first != NOT_ROUTED).all(axis=(1, 2))
    out[: len(first)][have] = first[have]
    return out


def routes_state(routes: np.ndarray | None) -> dict | None:
    """JSON-able form of ``routes`` (checkpoints, the partial-rollout buffer)."""
    if routes is None:
        return None
    return {"shape": list(routes.shape), "data": base64.b64encode(routes.astype(np.uint8).tobytes()).decode()}


def routes_from_state(state: dict | None) -> np.ndarray | None:
    if state is None:
        return None
    data = np.frombuffer(base64.b64decode(state["data"]), dtype=np.uint8)
    return data.reshape(state["shape"]).copy()
