"""The GPU check (``scripts/gpu-check.sh``): what a lent H100/H200 can tell about the learner in minutes,
with only torch and transformers installed (no Ray, DeepSpeed or vLLM).

A full-width slice of Kimi-VL-A3B (``configs/kimi-vl-a3b/model_config.json``: MoonViT, the projector,
one dense and one MoE decoder layer, random init, bf16, gradient checkpointing on) takes a packed
micro-batch of ``--tokens`` real tokens (16K; one sequence with an image, the rest text, each attending
only to itself: ``learner/packing.py``). Measured: forward + backward tokens/s and MFU against the card's
bf16 peak, with and without the 163,840-word LM head (which dominates a two-layer slice), from the same
FLOPs formula as ``kvrl plan`` (``actors.plan_memory.train_flops_per_token``); peak memory against the
plan's activations, parameters and gradients for the slice; which attention and expert kernels ran; a
routing-replay forward (the model's own routes replayed give its own output); and one
``torch.optim.Muon`` + QK-clip step. One JSON with the versions. ``--dry-run``: the same code path on
CPU at the tiny model's width and a few hundred tokens (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from actors.plan_memory import LearnerSetup, learner_memory, model_shape, train_flops_per_token
from kimivl import KimiVLConfig, KimiVLForConditionalGeneration
from learner import qkclip
from learner.kernels import kernels_ran, pin_kernels
from learner.logprobs import head_logprobs
from learner.optim import full_shape, takes_muon
from learner.packing import SFTExample, collate_packed, packed_logits
from learner.routing import RoutingReplay

ROOT = Path(__file__).resolve().parents[1]
A3B = ROOT / "configs" / "kimi-vl-a3b" / "model_config.json"
# dense bf16 tensor-core peaks (no sparsity), TFLOP/s: NVIDIA's H100 SXM and H200 datasheets
PEAKS = {"H100": 989.0, "H200": 989.0}


def slice_config(dry_run: bool) -> KimiVLConfig:
    """A3B's config with two decoder layers (the first dense, the second MoE); the tiny widths when
    ``dry_run``."""
    if dry_run:
        from kimivl.tiny import TINY_TEXT, TINY_VISION

        text = dict(TINY_TEXT, vocab_size=1024, num_hidden_layers=2)
        vision = dict(TINY_VISION)
        return KimiVLConfig(text_config=text, vision_config=vision, media_placeholder_token_id=1000)
    raw = json.loads(A3B.read_text())
    raw["text_config"]["num_hidden_layers"] = 2
    return KimiVLConfig.from_dict(raw)


def packed_batch(config: KimiVLConfig, tokens: int, grid: int, device) -> tuple:
    """One packed row of ``tokens`` real tokens: a sequence with a ``grid`` x ``grid``-patch image, then
    text sequences of 2048 tokens (fewer at the end)."""
    g = torch.Generator().manual_seed(0)
    vocab, media = config.text_config.vocab_size, config.media_placeholder_token_id
    merged = grid * grid // 4
    lengths, left = [], tokens
    while left > 0:
        lengths.append(min(left, 2048 if lengths else max(2048, merged + 64)))
        left -= lengths[-1]
    examples = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, min(vocab, 100_000), (n,), generator=g).tolist()
        ids = [t if t != media else 0 for t in ids]
        pixels = hws = None
        if i == 0:
            ids[8 : 8 + merged] = [media] * merged
            pixels = torch.randn(grid * grid, 3, 14, 14, generator=g)
            hws = torch.tensor([[grid, grid]])
        examples.append(SFTExample(ids, [0] + [1] * (n - 1), pixels, hws))
    return collate_packed([examples], pad_id=0).to(device), lengths


def _forward(model, batch, head: bool, chunk: int):
    hidden = packed_logits(model, batch, hidden_states_only=True)
    if not head:
        return hidden.float().square().mean()
    lp, _ = head_logprobs(hidden, batch.targets, model.language_model.lm_head, chunk)
    return -(lp * batch.loss_mask).sum() / batch.loss_mask.sum()


def _timed(fn, device, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def muon_qkclip_step(model, tau: float = 1.0) -> dict:
    """One Moonlight-style Muon step (AdamW for what Muon does not take) after a recorded forward, then
    QK-clip at a low tau so it acts."""
    muon = [p for n, p in model.named_parameters() if takes_muon(n, full_shape(p)) and p.ndim == 2]
    rest = [p for n, p in model.named_parameters() if not any(p is q for q in muon)]
    optimizers = [torch.optim.Muon(muon, lr=1e-4, adjust_lr_fn="match_rms_adamw"), torch.optim.AdamW(rest)]
    for o in optimizers:
        o.step()
        o.zero_grad(set_to_none=True)
    maxima = qkclip.take_max_logits(model)

    def scale_rows(param, factors):
        param.data.mul_(factors.to(param.device, param.dtype)[:, None])

    return qkclip.clip(model, tau, maxima, scale_rows)


def run(dry_run: bool, tokens: int, grid: int, repeats: int, chunk: int) -> dict:
    device = torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    config = slice_config(dry_run)
    torch.manual_seed(0)
    with torch.device(device):
        model = KimiVLForConditionalGeneration(config).to(dtype).train()
    model.gradient_checkpointing_enable()
    batch, lengths = packed_batch(config, tokens, grid, device)
    out: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()}
    out["kernels"] = pin_kernels(model, device.type, packed=True)
    times = {}
    for head in (True, False):

        def step(head=head):
            model.zero_grad(set_to_none=True)
            _forward(model, batch, head, chunk).backward()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times[head] = _timed(step, device, repeats)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    # the plan's figures for this slice, one rank, no optimizer
    with tempfile.TemporaryDirectory(prefix="kvrl-gpu-check-") as folder:  # model_shape reads a file
        config_file = Path(folder) / "config.json"
        config_file.write_text(json.dumps(config.to_dict()))
        shape = model_shape(config_file)
    b = 4 if dtype == torch.float32 else 2
    setup = LearnerSetup(
        ranks=1,
        zero_stage=0,
        dtype_bytes=b,
        tokens=tokens,
        logits_chunk=chunk,
        checkpointing=True,
        patches=grid * grid,
    )
    plan = learner_memory(shape, setup)
    planned = plan["parameters"] + plan["gradients"] + plan["activations"]
    context = sum(n * (n + 1) / 2 for n in lengths) / tokens  # keys a token attends to, on average
    flops = {h: train_flops_per_token(shape, context, head=h) * tokens for h in (True, False)}
    peak_tflops = next((v for k, v in PEAKS.items() if k in out["device"]), None)
    for head, name in ((True, "with_head"), (False, "without_head")):
        achieved = flops[head] / times[head] / 1e12
        out[name] = {
            "seconds": times[head],
            "tokens_per_s": tokens / times[head],
            "tflops": achieved,
            "mfu": achieved / peak_tflops if peak_tflops else None,
        }
    out["memory"] = {"peak_bytes": peak, "plan_bytes": planned}
    out["memory"]["peak_vs_plan"] = peak / planned if peak else None
    out["workload"] = {"tokens": tokens, "sequences": len(lengths), "image_patches": grid * grid}
    out["workload"]["logits_chunk"] = chunk
    out["flops_per_token"] = {"with_head": flops[True] / tokens, "without_head": flops[False] / tokens}
    out["kernels"]["experts_ran"] = kernels_ran()  # path -> why ("" for grouped_mm)
    out["routing_replay"] = replay_check(model, batch)
    qkclip.enable(model)  # after the timing: its recording attention computes q·kᵀ once more
    with qkclip.recording(model):
        _forward(model, batch, True, chunk).backward()
    out["muon_qk_clip"] = muon_qkclip_step(model)
    out["shape"] = asdict(shape)
    out["versions"] = versions()
    return out


def replay_check(model, batch) -> dict:
    """The model's own routes, recorded and replayed: the output must not change."""
    replay = RoutingReplay(model)
    with torch.no_grad():
        with replay.record() as recorded:
            own = _forward(model, batch, False, 0)
        routes = torch.stack(recorded, dim=1)  # (tokens, layers, k)
        with replay.active(routes, replay=True):
            again = _forward(model, batch, False, 0)
    replay.remove()
    diff = float((own - again).abs())
    return {"layers": len(replay.routers), "max_abs_diff": diff, "disagreement": replay.disagreement()}


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__}
    out["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["driver"] = driver_version()
    return out


def driver_version() -> str | None:
    import subprocess

    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny width, a few hundred tokens")
    p.add_argument("--tokens", type=int, default=None, help="packed tokens (16384; dry run 384)")
    p.add_argument("--grid", type=int, default=None, help="image patches per side (64; dry run 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--logits-chunk", type=int, default=2048)
    p.add_argument("--out", default="gpu-check.json", help="the JSON to write")
    args = p.parse_args(argv)
    tokens = args.tokens or (384 if args.dry_run else 16384)
    grid = args.grid or (8 if args.dry_run else 64)
    result = run(args.dry_run, tokens, grid, args.repeats, args.logits_chunk)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name in ("with_head", "without_head"):
        r = result[name]
        mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
        print(f"gpu-check {name}: {r['tokens_per_s']:.0f} tokens/s, {r['tflops']:.1f} TFLOP/s{mfu}")
    replay = result["routing_replay"]["max_abs_diff"]
    k = result["kernels"]
    print(f"gpu-check: attention {k['attention']}, experts ran as {k['experts_ran']}")
    print(f"gpu-check: its own routes replayed, max |diff| {replay:.2e}")
    print(f"gpu-check: memory {result['memory']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
