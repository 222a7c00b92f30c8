"""``scripts/gpu-check.sh --dry-run``: the GPU check's code path on CPU at the tiny width, so it is ready
(and known to run) the moment a session is lent a device."""

from __future__ import annotations

import json
import math
import subprocess

import torch

from tests.helpers import ROOT


def test_the_dry_run_measures_every_part_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run", "--repeats", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gpu-check with_head:" in proc.stdout and "its own routes replayed" in proc.stdout
    r = json.loads(out.read_text())
    for name in ("with_head", "without_head"):
        assert r[name]["tokens_per_s"] > 0 and r[name]["mfu"] is None  # no GPU, no peak to compare with
    # the LM head's forward + backward: 6 x vocab x hidden FLOPs a token (tiny: 1024 x 64)
    heads = r["flops_per_token"]
    assert math.isclose(heads["with_head"] - heads["without_head"], 6 * 1024 * 64)
    assert r["workload"]["tokens"] == 384 and r["workload"]["image_patches"] == 64
    assert r["routing_replay"] == {"layers": 1, "max_abs_diff": 0.0, "disagreement": [0.0]}
    clip = r["muon_qk_clip"]
    assert clip["qk_clip_heads"] > 0 and math.isfinite(clip["max_logit"])  # tau 1 acts on random weights
    assert r["kernels"]["attention"] == "kvrl_packed" and r["memory"]["plan_bytes"] > 0
    assert r["kernels"]["experts_ran"] == {"grouped_mm": ""}
    assert r["versions"]["torch"] == torch.__version__


def test_the_full_slice_is_a3b_at_two_layers():
    from kvrl.gpu_check import slice_config

    config = slice_config(dry_run=False)
    text = config.text_config
    assert (text.num_hidden_layers, text.first_k_dense_replace, text.hidden_size) == (2, 1, 2048)
    assert (text.n_routed_experts, text.num_experts_per_tok, text.vocab_size) == (64, 6, 163840)
    assert config.vision_config.num_hidden_layers == 27
