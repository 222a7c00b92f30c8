"""Recording, in the rollout engine, which experts each MoE layer routed every token to (routing replay,
R3 arXiv 2510.11370; the learner's side is ``learner/routing.py``, the format ``kimivl/routes.py``).

vLLM 0.32's own capture (``enable_return_routed_experts``) needs the V2 model runner and prefix
caching; the CPU build runs the V1 runner (no Triton) and turns prefix caching off for MLA, and V2 does
not take kvrl's custom speculative proposer. So kvrl records through vLLM's public router hook,
``BaseRouter.set_capture_fn``, which every MoE layer's router calls with the logical top-k expert ids of
the step's tokens before any expert-parallel remapping, and reads which rows belong to which request
from the model runner around its ``_model_forward`` (called once per real step; warm-up and profiling
runs call the model directly and are ignored):

- request i of the step owns rows ``query_start_loc[i] : query_start_loc[i + 1]``, at positions
  ``num_computed_tokens[i] + j`` of its prompt + response;
- positions are written last-write-wins: chunked prefill writes a prompt chunk by chunk, a preempted
  request recomputes (the same routing, same weights), and a rejected speculative draft's row is
  overwritten when the next step feeds the token that replaced it; rows past the response's end (the
  last step's drafts) are cut when the request is taken;
- a prefix the engine found in its cache is not recomputed and so has no rows (``NOT_ROUTED``): the
  learner routes those tokens itself. kvrl's CPU engines run without a prefix cache.

The callbacks run in Python, so this needs an eager model (an engine that records routes runs eagerly:
``rollout.engine.eager_mode``); a CUDA-graph engine would need the ids written into a static buffer
inside the graph.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from kimivl.routes import NOT_ROUTED

log = logging.getLogger(__name__)


class RouteRecorder:
    """Installed on a vLLM model runner; keeps each request's routes until :meth:`take`."""

    def __init__(self, runner):
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

        self.runner = runner
        moe = [m for m in runner.model.modules() if isinstance(m, MoERunner)]
        layers = sorted(moe, key=lambda m: m.layer_id)
        self.slots = {m.layer_id: i for i, m in enumerate(layers)}
        self.top_k = 0
        self.rows: dict[str, np.ndarray] = {}  # request key -> (capacity, layers, k), NOT_ROUTED unfilled
        self._step: dict | None = None
        for m in layers:
            m.router.set_capture_fn(functools.partial(self._capture, self.slots[m.layer_id]))
        forward = runner._model_forward

        def recorded_forward(*args, **kwargs):
            self._begin()
            try:
                return forward(*args, **kwargs)
            finally:
                self._end()

        runner._model_forward = recorded_forward
        log.info("recording the routing of %d MoE layers", len(layers))

    def _begin(self) -> None:
        batch = self.runner.input_batch
        n = batch.num_reqs
        starts = self.runner.query_start_loc.np[: n + 1].copy()
        self._step = {
            "requests": [r.rsplit("-", 1)[0] for r in batch.req_ids[:n]],  # vLLM's suffix off: kvrl's key
            "starts": starts,
            "computed": batch.num_computed_tokens_cpu[:n].copy(),
            "tokens": int(starts[-1]),
            "ids": {},
        }

    def _capture(self, slot: int, topk_ids) -> None:
        step = self._step
        if step is None:  # a warm-up or profiling run
            return
        step["ids"][slot] = topk_ids[: step["tokens"]].to("cpu").numpy().astype(np.uint8)

    def _end(self) -> None:
        step, self._step = self._step, None
        if not step or len(step["ids"]) != len(self.slots):
            return
        ids = np.stack([step["ids"][s] for s in range(len(self.slots))], axis=1)  # (tokens, layers, k)
        self.top_k = ids.shape[2]
        starts, computed = step["starts"], step["computed"]
        for i, key in enumerate(step["requests"]):
            rows = ids[starts[i] : starts[i + 1]]
            first = int(computed[i])
            store = self._room(key, first + len(rows), ids.shape[1:])
            store[first : first + len(rows)] = rows

    def _room(self, key: str, length: int, shape: tuple[int, ...]) -> np.ndarray:
        store = self.rows.get(key)
        if store is None or len(store) < length:
            size = max(length, 2 * len(store) if store is not None else 0)
            grown = np.full((size, *shape), NOT_ROUTED, np.uint8)
            if store is not None:
                grown[: len(store)] = store
            self.rows[key] = store = grown
        return store

    def take(self, lengths: dict[str, int]) -> dict[str, np.ndarray]:
        """Each request's routes, ``(length, layers, k)`` for its ``length`` tokens of prompt + response
        (rows past it, from drafts, dropped); forgotten here once taken."""
        out = {}
        for key, length in lengths.items():
            store = self.rows.pop(key, None)
            routes = np.full((length, len(self.slots), self.top_k), NOT_ROUTED, np.uint8)
            if store is not None:
                n = min(length, len(store))
                routes[:n] = store[:n]
            out[key] = routes
        return out


class RouteRecording:
    """The worker-extension methods (``rollout/weight_sync.py`` mixes them in), called through
    ``LLM.collective_rpc``: in-process they return the arrays themselves."""

    def kvrl_record_routes(self) -> int:
        """Start recording (once); the number of MoE layers."""
        if getattr(self, "_kvrl_routes", None) is None:
            self._kvrl_routes = RouteRecorder(self.model_runner)
        return len(self._kvrl_routes.slots)

    def kvrl_take_routes(self, lengths: dict[str, int]) -> dict[str, np.ndarray]:
        return self._kvrl_routes.take(lengths)
