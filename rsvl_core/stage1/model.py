"""SR3UNet: the stage-1 noise predictor, key-for-key compatible with the SR3 code base's `UNet`.

Written from the SR3 paper (Saharia et al., 2021, "Image Super-Resolution via Iterative
Refinement") and the layout of the released checkpoint. Module and parameter names are chosen so
that `state_dict()` equals the checkpoint's `denoise_fn.*` keys with the prefix removed:
`downs` / `mid` / `ups` lists, conv blocks as `block.3`, noise MLP as `noise_level_mlp.1/.3`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import SR3Config


class NoiseLevelEncoding(nn.Module):
    """Sinusoidal encoding of the continuous noise level sqrt(alpha_bar) (WaveGrad style).

    (B, 1) -> (B, 1, dim): sin first, then cos; frequencies exp(-ln(1e4) * k / (dim/2)).
    No rescaling of the noise level (unlike integer-timestep embeddings).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = torch.arange(half, dtype=noise_level.dtype, device=noise_level.device) / half
        angles = noise_level.unsqueeze(1) * torch.exp(-math.log(1e4) * step.unsqueeze(0))
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class NoiseBias(nn.Module):
    """Adds a per-channel bias computed from the noise embedding (FiLM without the scale)."""

    def __init__(self, emb_dim: int, channels: int) -> None:
        super().__init__()
        # Nested `noise_func.noise_func.0` in the checkpoint: a Sequential around one Linear.
        self.noise_func = nn.Sequential(nn.Linear(emb_dim, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.noise_func(emb).view(x.shape[0], -1, 1, 1)


class ConvBlock(nn.Module):
    """GroupNorm -> Swish -> (Dropout) -> 3x3 conv. Index 2 is kept so the conv stays `block.3`."""

    def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            Swish(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.noise_func = NoiseBias(emb_dim, dim_out)
        self.block1 = ConvBlock(dim, dim_out, groups)
        self.block2 = ConvBlock(dim_out, dim_out, groups, dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.noise_func(self.block1(x), emb)
        return self.block2(h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention, qkv as one bias-free 1x1 conv, scale 1/sqrt(channels)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        # SDPA's default scale is 1/sqrt(last dim) = 1/sqrt(channels), as in the seed.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out(out.transpose(-1, -2).reshape(b, c, h, w)) + x


class ResnetBlockWithAttention(nn.Module):
    def __init__(
        self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float, with_attention: bool
    ) -> None:
        super().__init__()
        self.res_block = ResnetBlock(dim, dim_out, emb_dim, groups, dropout)
        self.attn = SelfAttention(dim_out, groups) if with_attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res_block(x, emb)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SR3UNet(nn.Module):
    """Predicts the noise in x_t given the bicubic-upsampled LR image and the noise level.

    Input height and width must be multiples of ``config.size_multiple`` (16 for the real model);
    callers pad (see :mod:`rsvl_core.kit.tiling`).
    """

    def __init__(self, config: SR3Config | None = None) -> None:
        super().__init__()
        self.config = config = config or SR3Config()
        emb_dim = config.inner_channel
        groups, dropout = config.norm_groups, config.dropout

        # 1. noise-level embedding: encoding -> Linear -> Swish -> Linear (keys .1 and .3)
        self.noise_level_mlp = nn.Sequential(
            NoiseLevelEncoding(emb_dim),
            nn.Linear(emb_dim, emb_dim * 4),
            Swish(),
            nn.Linear(emb_dim * 4, emb_dim),
        )

        # 2. down path; `skip_widths` tracks the width of every tensor pushed for the skips
        downs: list[nn.Module] = [nn.Conv2d(config.in_channel, config.inner_channel, 3, padding=1)]
        skip_widths = [config.inner_channel]
        width = config.inner_channel
        n_levels = len(config.channel_mults)
        for level, level_width in enumerate(config.widths):
            attn = level in config.attention_levels
            for _ in range(config.res_blocks):
                downs.append(ResnetBlockWithAttention(width, level_width, emb_dim, groups, dropout, attn))
                skip_widths.append(level_width)
                width = level_width
            if level < n_levels - 1:
                downs.append(Downsample(width))
                skip_widths.append(width)
        self.downs = nn.ModuleList(downs)

        # 3. middle: attention block then plain block
        self.mid = nn.ModuleList(
            [
                ResnetBlockWithAttention(width, width, emb_dim, groups, dropout, True),
                ResnetBlockWithAttention(width, width, emb_dim, groups, dropout, False),
            ]
        )

        # 4. up path: one more block per level than on the way down, each eating one skip
        ups: list[nn.Module] = []
        for level in reversed(range(n_levels)):
            attn = level in config.attention_levels
            level_width = config.widths[level]
            for _ in range(config.res_blocks + 1):
                ups.append(
                    ResnetBlockWithAttention(
                        width + skip_widths.pop(), level_width, emb_dim, groups, dropout, attn
                    )
                )
                width = level_width
            if level > 0:
                ups.append(Upsample(width))
        self.ups = nn.ModuleList(ups)

        # 5. output
        self.final_conv = ConvBlock(width, config.out_channel, groups)

    def embed_noise_level(self, noise_level: torch.Tensor) -> torch.Tensor:
        """(B,) or (B, 1) sqrt(alpha_bar) -> (B, 1, inner_channel) embedding."""
        if noise_level.ndim == 1:
            noise_level = noise_level[:, None]
        return self.noise_level_mlp(noise_level)

    def forward_down(self, sample: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the down path; returns the last feature map and the skips (a seam for step caches)."""
        skips = self.resume_down(sample, [], emb)
        return skips[-1], skips

    def resume_down(self, sample: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor,
                    depth: int = 0) -> list[torch.Tensor]:
        """Run (or continue) the down path until `depth` outputs exist (0 = all): a step cache's signal."""
        skips = list(skips)
        stop = len(self.downs) if depth <= 0 else min(depth, len(self.downs))
        h = skips[-1] if skips else sample
        for layer in list(self.downs)[len(skips):stop]:
            h = layer(h, emb) if isinstance(layer, ResnetBlockWithAttention) else layer(h)
            skips.append(h)
        return skips

    def forward_up(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        """Middle block, up path and output conv."""
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.ups:
            if isinstance(layer, ResnetBlockWithAttention):
                h = layer(torch.cat((h, skips.pop()), dim=1), emb)
            else:
                h = layer(h)
        return self.final_conv(h)

    def forward(self, sample: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        """Predict the noise.

        Args:
            sample: (B, in_channel, H, W), `cat([condition, x_t], 1)` with both in [-1, 1] scale;
                H and W multiples of ``config.size_multiple``.
            noise_level: (B,) or (B, 1) continuous sqrt(alpha_bar_t) of x_t.
        Returns:
            (B, out_channel, H, W) predicted noise epsilon.
        """
        m = self.config.size_multiple
        if sample.shape[-1] % m or sample.shape[-2] % m:
            raise ValueError(
                f"SR3UNet input {tuple(sample.shape[-2:])} is not a multiple of {m}; pad it first"
            )
        emb = self.embed_noise_level(noise_level.to(sample.dtype))
        h, skips = self.forward_down(sample, emb)
        return self.forward_up(h, skips, emb)
