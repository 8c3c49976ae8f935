"""SUPIR's connectors that inject control features into the SDXL decoder: ZeroSFT and ZeroCrossAttn.

Parameter names follow the SUPIR checkpoint (`project_modules.<i>.*`), so weights load unchanged.
`control_scale` blends each connector's output with its plain (no-control) path: 0 gives a plain
SDXL UNet, 1 the trained model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, like SGM's `normalization()`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class ZeroSFT(nn.Module):
    """Spatial feature transform of the decoder input, conditioned on a control feature map.

    With `concat_channels > 0` it replaces the UNet's `cat([h, skip])`: the control adds a 1x1
    projection to the skip, then modulates the normalised concatenation with per-pixel scale and
    shift maps (SFT). Without, it modulates the middle block's output.

    Args:
        label_nc: control feature channels.
        norm_nc: channels of the modulated tensor (the skip, or h for the middle block).
        concat_channels: decoder channels concatenated in front of the skip (0: none).
        hidden: width of the shared 3x3 conv (128 in SUPIR).
    """

    def __init__(self, label_nc: int, norm_nc: int, concat_channels: int = 0, hidden: int = 128,
                 norm_groups: int = 32) -> None:
        super().__init__()
        total = norm_nc + concat_channels
        self.pre_concat = concat_channels != 0
        self.param_free_norm = GroupNorm32(norm_groups, total, eps=1e-5)  # affine despite the name
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.SiLU())
        self.zero_mul = nn.Conv2d(hidden, total, 3, padding=1)
        self.zero_add = nn.Conv2d(hidden, total, 3, padding=1)
        self.zero_conv = nn.Conv2d(label_nc, norm_nc, 1)

    def forward(self, control: torch.Tensor, x: torch.Tensor, decoder: torch.Tensor | None = None,
                control_scale: float = 1.0) -> torch.Tensor:
        """control: (B, label_nc, H, W); x: skip (B, norm_nc, H, W); decoder: (B, concat, H, W) or None."""
        if self.pre_concat:
            if decoder is None:
                raise ValueError("this ZeroSFT concatenates decoder features: pass `decoder`")
            plain = torch.cat([decoder, x], dim=1)
            fused = torch.cat([decoder, x + self.zero_conv(control)], dim=1)
        else:
            plain = x
            fused = x + self.zero_conv(control)
        hidden = self.mlp_shared(control)
        gamma, beta = self.zero_mul(hidden), self.zero_add(hidden)
        modulated = self.param_free_norm(fused) * (gamma + 1) + beta
        if control_scale == 1.0:
            return modulated
        return modulated * control_scale + plain * (1 - control_scale)


class ZeroCrossAttn(nn.Module):
    """Cross-attention from decoder tokens to control tokens, added to the decoder (before an upsampler).

    Args:
        context_dim: control feature channels.
        query_dim: decoder channels; heads = query_dim // head_dim as in SUPIR.
    """

    def __init__(self, context_dim: int, query_dim: int, head_dim: int = 64, norm_groups: int = 32) -> None:
        super().__init__()
        heads = query_dim // head_dim
        if heads < 1:
            raise ValueError(f"ZeroCrossAttn query_dim {query_dim} is smaller than its head width {head_dim}")
        from diffusers.models.attention_processor import Attention  # on use: seconds to import

        self.attn = Attention(query_dim, cross_attention_dim=context_dim, heads=heads, dim_head=head_dim,
                              bias=False, out_bias=True)
        self.norm1 = GroupNorm32(norm_groups, query_dim, eps=1e-5)
        self.norm2 = GroupNorm32(norm_groups, context_dim, eps=1e-5)

    def forward(self, control: torch.Tensor, h: torch.Tensor, control_scale: float = 1.0) -> torch.Tensor:
        """control: (B, context_dim, H', W'); h: (B, query_dim, H, W) -> same shape as h."""
        b, c, height, width = h.shape
        query = self.norm1(h).flatten(2).transpose(1, 2)
        context = self.norm2(control).flatten(2).transpose(1, 2)
        out = self.attn(query, encoder_hidden_states=context)
        out = out.transpose(1, 2).reshape(b, c, height, width)
        return h + out * control_scale


def build_connectors(config) -> nn.ModuleList:
    """The 12 (SDXL) connectors in checkpoint order, derived from the UNet layout.

    Index order is the seed's: the decoder consumes them from the last (after the middle block)
    to the first, with a ZeroCrossAttn inserted before every upsampler.
    """
    control = config.control_channels()
    skips = config.encoder_channels()
    widths = config.block_out_channels
    reverse: list[nn.Module] = [ZeroSFT(control[-1], widths[-1], 0, config.zero_sft_hidden, config.norm_groups)]
    h_channels = widths[-1]
    k = len(skips) - 1
    for i in range(config.levels):
        level = config.levels - 1 - i
        for j in range(config.num_res_blocks + 1):
            reverse.append(ZeroSFT(control[k], skips[k], h_channels, config.zero_sft_hidden, config.norm_groups))
            h_channels = widths[level]
            if j == config.num_res_blocks and i != config.levels - 1:
                reverse.append(ZeroCrossAttn(control[k], h_channels, config.zero_cross_attn_head_dim,
                                             config.norm_groups))
            k -= 1
    return nn.ModuleList(reversed(reverse))
