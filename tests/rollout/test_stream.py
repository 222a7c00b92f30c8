"""Streamed weight sync into a real vLLM engine (``rollout/stream.py``, ``learner/stream.py``,
``kimivl/weight_stream.py``), in one process: the engine runs in-process, the sender in a thread, over
a gloo group of two. The engine then samples exactly what it samples after today's full-state reload of
the same weights, tokens and log-probs bit for bit, and those log-probs are the learner's. (Its
parameters cannot be compared directly: on CPU vLLM repacks some weights into kernel buffers of its own
and leaves the parameter behind.)"""

from __future__ import annotations

import threading

import pytest
import torch

from kimivl.weight_stream import TensorSpec, join, layout, listen, unit_size, units


def test_units_cut_at_the_bucket_and_send_large_tensors_alone():
    f32 = [TensorSpec(f"t{i}", "float32", (n,)) for i, n in enumerate([4, 4, 40, 4, 100, 2])]
    # 16, 16, 160, 16, 400, 8 bytes; aligned to 64: 64, 64, 192, 64, 448, 64; a bucket of 256 bytes
    assert units(f32, 256) == [[0, 1], [2, 3], [4], [5]]
    assert layout([f32[0], f32[1]]) == ([0, 64], 128)
    assert unit_size([f32[4]], 256) == (400, True)  # alone and larger: its own 400 bytes, no copy
    assert unit_size([f32[5]], 256) == (64, False)  # alone but small: through the buffer
    assert TensorSpec("b", "bfloat16", (3, 5)).nbytes == 30


@pytest.mark.slow
def test_a_streamed_sync_loads_what_a_full_reload_loads(tiny_dir):
    from kimivl import KimiVLForConditionalGeneration
    from learner.logprobs import response_logprobs
    from learner.stream import WeightSender
    from rollout.engine import EngineConfig
    from rollout.prompts import chat_prompt
    from rollout.worker import RolloutRequest, RolloutWorker, SamplingConfig

    learner = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    # a small bucket: many units, and the larger tensors (embeddings, fused experts) sent alone
    sender = WeightSender(learner, zero3=False, bucket_bytes=64 * 1024)
    assert [s.name for s in sender.specs] == [n for n, _ in learner.checkpoint_tensors()]
    assert any(unit_size([sender.specs[u[0]]], 64 * 1024)[1] for u in sender.units if len(u) == 1)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        worker = RolloutWorker(EngineConfig(model=str(tiny_dir), max_model_len=512, weight_stream=True))
        try:
            store = listen("127.0.0.1", 2, 60)
            ends = {}
            joining = threading.Thread(
                target=lambda: ends.update(s=join("127.0.0.1", store.port, 0, 2, "gloo", 60, store=store))
            )
            joining.start()
            worker.join_stream({"host": "127.0.0.1", "port": store.port, "rank_offset": 1, "world_size": 2})
            joining.join()
            update = {
                "names": [s.name for s in sender.specs],
                "dtype_names": [s.dtype for s in sender.specs],
                "shapes": [list(s.shape) for s in sender.specs],
                "bucket_bytes": sender.bucket_bytes,
            }
            sending = threading.Thread(target=lambda: ends.update(stats=sender.send(ends["s"])))
            sending.start()
            worker.receive_stream(update, 1)
            sending.join()
            request = RolloutRequest("q", chat_prompt(worker.processor, "What is 2 + 3?"), [], 0)
            streamed = worker.generate([request], SamplingConfig(n=2, max_tokens=32))[0].samples
            # today's path with the same weights
            worker.update_weights(dict(learner.checkpoint_tensors()), 2)
            reloaded = worker.generate([request], SamplingConfig(n=2, max_tokens=32))[0].samples
        finally:
            worker.shutdown()
    assert ends["stats"]["units"] == len(sender.units) and ends["stats"]["bytes"] == sender.nbytes
    for a, b in zip(streamed, reloaded, strict=True):
        assert a.response_token_ids == b.response_token_ids and a.logprobs == b.logprobs
    original = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    for sample in streamed:
        args = (sample.prompt_token_ids, sample.response_token_ids)
        with torch.no_grad():
            ours, old = response_logprobs(learner, *args), response_logprobs(original, *args)
        engine = torch.tensor(sample.logprobs)
        assert (ours - engine).abs().max() <= 1e-3
        assert (old - engine).abs().max() > 1e-2  # not the weights the engine started with
