"""The weight stream's wire format and transport, shared by its sender (``learner/stream.py``, on learner
rank 0) and its receivers (``rollout/stream.py``, in every engine worker).

A sync sends the model's tensors under their official checkpoint names (:func:`official_tensors`), in
one fixed order, over a process group of its own: the sender is rank 0, each engine worker one more
rank. Both sides know the order and every tensor's dtype and shape beforehand (:class:`TensorSpec`),
so nothing but bytes crosses the wire: the tensors are cut into **units** (:func:`units`) of at most
``bucket_bytes``, each sent as one flat uint8 broadcast; a tensor larger than a bucket is a unit of its
own, sent from its own memory without a copy. Offsets inside a unit are 64-byte aligned, so each
tensor is a view of the received buffer.

The group is a plain ``torch.distributed`` process group built from a TCP store (gloo on CPU, NCCL on
GPU), outside any default group: the learner ranks' DeepSpeed group and the engines' own are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch

ALIGN = 64


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # torch dtype name: "float32", "bfloat16"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * getattr(torch, self.dtype).itemsize


def spec_of(name: str, tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


def official_tensors(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """One state-dict entry under the official checkpoint names, as vLLM's loader expects them.

    transformers stores routed experts fused as (E, 2I, H) ``gate_up_proj`` and (E, H, I) ``down_proj``;
    official checkpoints (and vLLM) name each expert's matrices. These are views (meta tensors give the
    names and shapes alone)."""
    if name.endswith("mlp.experts.gate_up_proj"):
        prefix = name[: -len("gate_up_proj")]
        for e, fused in enumerate(tensor):
            gate, up = fused.chunk(2, dim=0)
            yield f"{prefix}{e}.gate_proj.weight", gate
            yield f"{prefix}{e}.up_proj.weight", up
    elif name.endswith("mlp.experts.down_proj"):
        prefix = name[: -len("down_proj")]
        for e, down in enumerate(tensor):
            yield f"{prefix}{e}.down_proj.weight", down
    else:
        yield name, tensor


def layout(specs: list[TensorSpec]) -> tuple[list[int], int]:
    """Each tensor's byte offset in a unit and the unit's size."""
    offsets, end = [], 0
    for s in specs:
        offsets.append(end)
        end += -(-s.nbytes // ALIGN) * ALIGN
    return offsets, end


def unit_size(part: list[TensorSpec], bucket_bytes: int) -> tuple[int, bool]:
    """The bytes one unit broadcasts, and whether it is a lone tensor larger than a bucket, sent from
    its own memory (unaligned) instead of through the bucket buffer."""
    _, size = layout(part)
    if len(part) == 1 and size > bucket_bytes:
        return part[0].nbytes, True
    return size, False


def units(specs: list[TensorSpec], bucket_bytes: int) -> list[list[int]]:
    """Indices of ``specs`` per broadcast unit, in order: consecutive tensors up to ``bucket_bytes``
    (aligned), or one tensor alone where it is larger."""
    out: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, s in enumerate(specs):
        size = -(-s.nbytes // ALIGN) * ALIGN
        if size > bucket_bytes:
            out += [current, [i]] if current else [[i]]
            current, used = [], 0
            continue
        if used + size > bucket_bytes:
            out.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        out.append(current)
    return out


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as flat uint8 (no copy)."""
    return tensor.contiguous().view(-1).view(torch.uint8)


def unpack(buffer: torch.Tensor, specs: list[TensorSpec]) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of a received unit: views of ``buffer``."""
    offsets, _ = layout(specs)
    out = []
    for s, off in zip(specs, offsets, strict=True):
        view = buffer[off : off + s.nbytes].view(getattr(torch, s.dtype)).view(s.shape)
        out.append((s.name, view))
    return out


@dataclass
class StreamGroup:
    """One end of the stream's process group; rank 0 (the sender) also serves the TCP store."""

    store: object
    group: object
    rank: int
    world_size: int

    def broadcast(self, buffer: torch.Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        opts.rootTensor = 0
        self.group.broadcast([buffer], opts).wait()


def listen(host: str, world_size: int, timeout_s: float):
    """Rank 0's TCP store on a free port (the port: ``store.port``); the others connect to it."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    return dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)


def join(
    host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float, store=None
) -> StreamGroup:
    """Build the group (blocks until all ``world_size`` ranks have joined); ``store``: rank 0's own."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    prefixed = dist.PrefixStore("kvrl-weight-stream", store)
    if backend == "gloo":
        group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    elif backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
    else:
        raise ValueError(f"weight stream backend {backend!r}: choose gloo or nccl")
    return StreamGroup(store, group, rank, world_size)
