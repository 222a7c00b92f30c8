"""Streamed weight sync, the sending side: learner rank 0 sends the model to the engines one module at a
time (wire format and transport: ``kimivl/weight_stream.py``; receivers: ``rollout/stream.py``).

Every rank walks the model's modules in one order. Under ZeRO-3 consecutive modules are gathered
together, up to the largest module's bytes, in one flat all-gather (a collective, so every rank takes
part), only while rank 0 copies their tensors into the bucket buffer or, for a tensor larger than a
bucket, broadcasts it from its own memory; they are released before the next group is gathered. Rank
0's extra memory during a sync is therefore at most the largest module's parameters (gathered) plus one
bucket, where gathering the whole model took all of it at once on every rank. Below ZeRO-3 the
parameters are whole already and nothing is gathered. With expert parallelism an MoE layer is one
module: every rank gathers its experts over the EP group and rank 0 sends them in transformers'
layout, so the receivers see the same names and shapes as without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from kimivl.weight_stream import (
    StreamGroup,
    TensorSpec,
    as_bytes,
    layout,
    official_tensors,
    spec_of,
    unit_size,
    units,
)
from learner.expert_parallel import hf_layer_tensors, is_ep_layer

log = logging.getLogger(__name__)


def _own_tensors(
    prefix: str, module: nn.Module, full_shape, meta: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """A module's own parameters, then its persistent buffers, under their state-dict names (the
    order ``state_dict`` lists them in). An AutoEP layer (expert parallelism) owns all of its tensors,
    given in transformers' layout, the experts gathered over its EP group (collective; ``meta``:
    stand-ins of the full shapes, no communication)."""
    if is_ep_layer(module):
        yield from hf_layer_tensors(prefix, module, meta=meta)
        return
    lead = f"{prefix}." if prefix else ""
    for name, p in module._parameters.items():
        if p is not None:
            yield lead + name, full_shape(p)
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield lead + name, b


@contextmanager
def _coalesced_gather(params: list[nn.Parameter]):
    """ZeRO-3 parameters whole inside, partitioned again after (collective). One flat all-gather for
    all of them, as DeepSpeed's own forward fetches a module (``all_gather_coalesced``), where
    ``GatheredParameters`` runs one collective per parameter; parameters already whole (ZeRO-3 keeps
    small ones on every rank) are left as they are."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gather = [p for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    if gather:
        gather[0].all_gather_coalesced(gather).wait()
    try:
        yield
    finally:
        if gather:
            gather[0].partition(param_list=gather, has_been_updated=False)


class WeightSender:
    """The stream's order and units for ``module`` (a rank's model, ZeRO-3-partitioned or not)."""

    def __init__(self, module: nn.Module, zero3: bool, bucket_bytes: int):
        if bucket_bytes < 1:
            raise ValueError(f"the weight stream's bucket must be >= 1 byte, got {bucket_bytes}")
        self.module, self.zero3, self.bucket_bytes = module, zero3, bucket_bytes
        ep = [f"{p}." for p, m in module.named_modules() if is_ep_layer(m)]
        self.owners = [
            (p, m)
            for p, m in module.named_modules()
            if (m._parameters or m._buffers or is_ep_layer(m)) and not any(p.startswith(e) for e in ep)
        ]
        self.specs: list[TensorSpec] = []
        sizes = []  # bytes of each owner's own tensors
        for prefix, m in self.owners:
            own = [
                spec_of(n, t)
                for name, shaped in _own_tensors(prefix, m, self._meta, meta=True)
                for n, t in official_tensors(name, shaped)
            ]
            self.specs += own
            sizes.append(sum(s.nbytes for s in own))
        self.largest_module = max(sizes, default=0)  # bytes: no gather holds more
        # consecutive modules gathered together up to the largest module's bytes: one collective per
        # group instead of one per parameter, and never more gathered at once than the largest module
        self.gathers: list[list[int]] = []
        held = self.largest_module
        for k, size in enumerate(sizes):
            if held + size > self.largest_module:
                self.gathers.append([])
                held = 0
            self.gathers[-1].append(k)
            held += size
        self.units = units(self.specs, bucket_bytes)
        self._unit_of = [0] * len(self.specs)  # tensor i is member _pos[i] of unit _unit_of[i]
        self._pos = [0] * len(self.specs)
        for u, members in enumerate(self.units):
            for k, i in enumerate(members):
                self._unit_of[i], self._pos[i] = u, k
        parts = [[self.specs[i] for i in members] for members in self.units]
        self._offsets = [layout(part)[0] for part in parts]
        self._sizes = [unit_size(part, bucket_bytes) for part in parts]

    def _meta(self, p: torch.Tensor) -> torch.Tensor:
        """A stand-in with the full shape and dtype (a ZeRO-3 parameter's own shape is its shard's)."""
        shape = getattr(p, "ds_shape", None) if self.zero3 else None
        return torch.empty(tuple(shape) if shape is not None else p.shape, dtype=p.dtype, device="meta")

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def bounds(self) -> dict[str, int]:
        """The model's bytes, the largest module's and the bucket's: rank 0's extra memory during a
        streamed sync is at most ``largest_module + bucket`` (a full gather: ``model``)."""
        return {"model": self.nbytes, "largest_module": self.largest_module, "bucket": self.bucket_bytes}

    def _gathered(self, modules: list[nn.Module]):
        params = [
            p
            for module in modules
            for p in (module.parameters() if is_ep_layer(module) else module._parameters.values())
            if p is not None
        ]
        if not self.zero3:
            return nullcontext()
        return _coalesced_gather(params)

    def send(self, stream: StreamGroup | None) -> dict[str, float]:
        """Send every tensor (rank 0, ``stream`` its end of the group) or only take part in the
        gathers (the other ranks, ``stream`` None). Collective over the learner ranks under ZeRO-3: a
        broadcast that fails (a receiver died) stops the sending, not the gathers, so the other ranks
        are not left waiting in one; the failure is raised once every module has been walked."""
        start = time.perf_counter()
        device = next(self.module.parameters()).device
        buffer = torch.empty(self.bucket_bytes, dtype=torch.uint8, device=device) if stream else None
        i, failed = 0, None
        for group in self.gathers:
            owners = [self.owners[k] for k in group]
            with self._gathered([m for _, m in owners]):
                for prefix, m in owners:
                    if stream is None and not is_ep_layer(m):
                        continue
                    # whole before any is sent: an AutoEP layer's EP gather runs on every rank
                    tensors = list(_own_tensors(prefix, m, lambda p: p))
                    if stream is None:
                        continue
                    try:
                        for name, tensor in tensors:
                            for _, view in official_tensors(name, tensor.detach()):
                                self._feed(stream, buffer, i, view)
                                i += 1
                    except Exception as e:  # a receiver gone: keep taking part in the other ranks' gathers
                        log.warning("weight stream: broadcast failed after %d tensors: %s", i, e)
                        failed, stream = e, None
        if failed is not None:
            raise RuntimeError(
                f"weight stream: broadcast failed after {i} of {len(self.specs)} tensors"
            ) from failed
        if buffer is not None and i != len(self.specs):
            raise RuntimeError(f"weight stream: sent {i} tensors of {len(self.specs)} planned")
        return {"seconds": time.perf_counter() - start, "bytes": float(self.nbytes), "units": len(self.units)}

    def _feed(self, stream: StreamGroup, buffer: torch.Tensor, i: int, tensor: torch.Tensor) -> None:
        u = self._unit_of[i]
        members = self.units[u]
        offsets, (size, direct) = self._offsets[u], self._sizes[u]
        data = as_bytes(tensor)
        if direct:  # a tensor larger than a bucket goes alone, from its own memory
            stream.broadcast(data)
            return
        k = self._pos[i]
        buffer[offsets[k] : offsets[k] + data.numel()].copy_(data)
        if k == len(members) - 1:
            stream.broadcast(buffer[:size])
