"""Streamed weight sync, the receiving side: a vLLM weight-transfer engine (vLLM 0.32's RL API,
``vllm/distributed/weight_transfer/``) that each engine worker runs, registered as backend ``kvrl``
by kvrl's vLLM plugin (``kimivl/vllm_plugin.py``). Sender: ``learner/stream.py``; wire format and
transport: ``kimivl/weight_stream.py``.

vLLM's own NCCL engine needs CUDA (``torch.cuda`` streams, PyNccl) and its trainer side sends a flat
parameter list; this one runs the same API over a ``torch.distributed`` group of its own, gloo on CPU
and NCCL on GPU, so the tests here run the code a GPU cluster runs. One sync is vLLM's session:
``start_weight_update`` (layerwise reload: every layer's weights set aside until its new ones are
complete), one ``update_weights`` with the whole plan (names, dtypes, shapes, bucket size), in which
the units are received one by one into fresh buffers (the reload keeps references to a unit's views
until the layer they belong to is complete, so a buffer is never reused) and handed to the model's
``load_weights``, then ``finish_weight_update``. On CPU the routed experts are prepacked again after
it, as ``rollout/weight_sync.py`` does after a reload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from vllm.distributed.weight_transfer.base import WeightTransferEngine

from kimivl.weight_stream import StreamGroup, TensorSpec, join, unit_size, units, unpack
from rollout.weight_sync import prepack_cpu_experts

log = logging.getLogger(__name__)
BACKEND = "kvrl"


@dataclass
class StreamInit:
    host: str
    port: int
    rank_offset: int  # this engine's first worker's rank in the stream group (the sender is 0)
    world_size: int
    backend: str = "gloo"
    timeout_s: float = 120.0


@dataclass
class StreamUpdate:
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    bucket_bytes: int
    stats: dict = field(default_factory=dict)


class StreamReceiver(WeightTransferEngine[StreamInit, StreamUpdate]):
    init_info_cls = StreamInit
    update_info_cls = StreamUpdate
    supports_draft_weight_update = False

    stream: StreamGroup | None = None

    def init_transfer_engine(self, init_info: StreamInit) -> None:
        from vllm.distributed import get_tensor_model_parallel_rank

        rank = init_info.rank_offset + get_tensor_model_parallel_rank()
        self.shutdown()
        self.stream = join(
            init_info.host,
            init_info.port,
            rank,
            init_info.world_size,
            init_info.backend,
            init_info.timeout_s,
        )
        log.info("weight stream: joined as rank %d of %d", rank, init_info.world_size)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: StreamUpdate) -> None:
        if self.stream is None:
            raise RuntimeError("weight stream: not joined (init_weight_transfer_engine first)")
        specs = [
            TensorSpec(n, d, tuple(s))
            for n, d, s in zip(update_info.names, update_info.dtype_names, update_info.shapes, strict=True)
        ]
        for members in units(specs, update_info.bucket_bytes):
            part = [specs[i] for i in members]
            size, _ = unit_size(part, update_info.bucket_bytes)
            buffer = torch.empty(size, dtype=torch.uint8, device=self.device)  # fresh: see the docstring
            self.stream.broadcast(buffer)
            self.model.load_weights(unpack(buffer, part))

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        prepack_cpu_experts(self.model)

    def shutdown(self) -> None:
        self.stream = None  # the group and its store close with their last reference
