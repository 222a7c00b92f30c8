"""MoonViT: the native-resolution vision encoder of Kimi-VL, for the learner.

Images of different sizes are packed into one token sequence; attention stays within each image
(Kimi-VL report, sec. 2.1, "NaViT-style packing"). Positions are given twice: a learnable absolute
embedding interpolated to each image's patch grid, plus 2D RoPE on queries and keys.

Parameter names are those of the official checkpoints (``vision_tower.patch_embed.proj``,
``vision_tower.encoder.blocks.{i}.wqkv`` ...), so the same safetensors load here and in vLLM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration import MoonViTConfig

# The 2D RoPE table covers grids up to 512 x 512 patches, as in the official model.
MAX_GRID = 512


class PosEmbedding(nn.Module):
    """Learnable (H0, W0, D) table, bicubic-interpolated to each image's (h, w) patch grid."""

    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(height, width, dim))
        nn.init.normal_(self.weight)

    def forward(self, grid_hws: list[tuple[int, int]]) -> torch.Tensor:  # (sum h*w, D)
        table = self.weight
        out = []
        for h, w in grid_hws:
            if (h, w) == tuple(table.shape[:2]):
                out.append(table.flatten(0, 1))
            else:
                grid = F.interpolate(table.permute(2, 0, 1)[None], size=(h, w), mode="bicubic")
                out.append(grid[0].permute(1, 2, 0).flatten(0, 1))
        return torch.cat(out)


class PatchEmbed(nn.Module):
    def __init__(self, config: MoonViTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(3, config.hidden_size, kernel_size=p, stride=p)
        self.pos_emb = PosEmbedding(config.init_pos_emb_height, config.init_pos_emb_width, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, grid_hws: list[tuple[int, int]]) -> torch.Tensor:
        # pixel_values: (L, 3, p, p), one row per patch -> (L, D)
        x = self.proj(pixel_values).flatten(1)
        return x + self.pos_emb(grid_hws).to(x.dtype)


def rope_2d_angles(head_dim: int, grid_hws: list[tuple[int, int]], theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles (L, head_dim // 2) of the 2D RoPE.

    Channel pairs alternate between axes: pair 2i rotates with the column index w, pair 2i+1 with
    the row index h, both at frequency theta ** (-4i / head_dim).
    """
    freqs = theta ** (-torch.arange(0, head_dim, 4, dtype=torch.float32)[: head_dim // 4] / head_dim)
    rows = []
    for h, w in grid_hws:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ang_w = xs.reshape(-1, 1).float() * freqs  # (h*w, D/4)
        ang_h = ys.reshape(-1, 1).float() * freqs
        rows.append(torch.stack([ang_w, ang_h], dim=-1).flatten(1))  # (h*w, D/2), w/h interleaved
    return torch.cat(rows)


def apply_rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (x[2j], x[2j+1]) by the angles behind cos/sin (fp32 math)."""
    xf = x.float().unflatten(-1, (-1, 2))
    even, odd = xf[..., 0], xf[..., 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc0 = nn.Linear(dim, hidden)
        self.fc1 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class EncoderBlock(GradientCheckpointingLayer):
    """One pre-norm transformer block. With the model's gradient checkpointing on, training keeps only
    its input and recomputes the rest in backward, as the decoder layers do (about 4 GB of activations
    per 4096-patch image through A3B's 27 blocks otherwise)."""

    def __init__(self, config: MoonViTConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.norm0 = nn.LayerNorm(d)
        self.norm1 = nn.LayerNorm(d)
        self.wqkv = nn.Linear(d, 3 * d)
        self.wo = nn.Linear(d, d)
        self.mlp = MLP(d, config.intermediate_size)

    def attention(self, x: torch.Tensor, cos, sin, seqlens: list[int]) -> torch.Tensor:
        # x: (L, D) packed over images; attention never crosses an image boundary.
        q, k, v = self.wqkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        q = apply_rope_pairs(q, cos[:, None], sin[:, None])
        k = apply_rope_pairs(k, cos[:, None], sin[:, None])
        outs = []
        for qi, ki, vi in zip(q.split(seqlens), k.split(seqlens), v.split(seqlens), strict=True):
            o = F.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1))
            outs.append(o.transpose(0, 1))
        return self.wo(torch.cat(outs).flatten(1))

    def forward(self, x, cos, sin, seqlens):
        x = x + self.attention(self.norm0(x), cos, sin, seqlens)
        return x + self.mlp(self.norm1(x))


class Encoder(nn.Module):
    def __init__(self, config: MoonViTConfig):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size)

    def forward(self, x: torch.Tensor, grid_hws: list[tuple[int, int]]) -> torch.Tensor:
        angles = rope_2d_angles(self.head_dim, grid_hws).to(x.device)
        cos, sin = angles.cos(), angles.sin()
        seqlens = [h * w for h, w in grid_hws]
        for block in self.blocks:
            x = block(x, cos, sin, seqlens)
        return self.final_layernorm(x)


def merge_patches(x: torch.Tensor, grid_hws: list[tuple[int, int]], kernel: tuple[int, int]) -> torch.Tensor:
    """(sum h*w, D) -> (sum h*w / (kh*kw), kh*kw, D): group each kh x kw window of patches."""
    kh, kw = kernel
    out = []
    for seq, (h, w) in zip(x.split([h * w for h, w in grid_hws]), grid_hws, strict=True):
        win = seq.view(h // kh, kh, w // kw, kw, -1).permute(0, 2, 1, 3, 4)
        out.append(win.reshape((h // kh) * (w // kw), kh * kw, -1))
    return torch.cat(out)


class MoonViT(nn.Module):
    """pixel_values (L, 3, p, p) + image_grid_hws (N, 2) -> merged tokens (L / 4, 4, D)."""

    def __init__(self, config: MoonViTConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.encoder = Encoder(config)

    def forward(self, pixel_values: torch.Tensor, image_grid_hws: torch.Tensor) -> torch.Tensor:
        grid_hws = [(int(h), int(w)) for h, w in image_grid_hws.tolist()]
        kh, kw = self.config.merge_kernel_size
        for i, (h, w) in enumerate(grid_hws):
            if h % kh or w % kw or not (0 < h <= MAX_GRID and 0 < w <= MAX_GRID):
                raise ValueError(
                    f"image {i}: patch grid {h}x{w} must be positive, at most {MAX_GRID} per side and "
                    f"divisible by the merge kernel {kh}x{kw}"
                )
        if sum(h * w for h, w in grid_hws) != pixel_values.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} patches but image_grid_hws sums to "
                f"{sum(h * w for h, w in grid_hws)}"
            )
        x = self.patch_embed(pixel_values, grid_hws)
        x = self.encoder(x, grid_hws)
        return merge_patches(x, grid_hws, (kh, kw))
