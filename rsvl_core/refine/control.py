"""GLVControl: SUPIR's control network, a trainable copy of the SDXL UNet encoder.

It reads the same noisy latent as the UNet (`sample`), plus the low-quality latent (`hint`) that
enters through one 3x3 conv added to the first block's output. Its outputs (every encoder block
and the middle block) feed the UNet's ZeroSFT/ZeroCrossAttn connectors.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RefinerConfig
from .unet import _attention, build_sdxl_unet_parts


class GLVControl(nn.Module):
    """Encoder + middle block of an SDXL UNet with a hint input; names follow diffusers + `input_hint_block`."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        parts = build_sdxl_unet_parts(config)
        self.conv_in = parts.conv_in
        self.time_proj = parts.time_proj
        self.time_embedding = parts.time_embedding
        self.add_embedding = parts.add_embedding
        self.down_blocks = parts.down_blocks
        self.mid_block = parts.mid_block
        # the seed's TimestepEmbedSequential(conv) keeps the ".0" in the checkpoint name
        self.input_hint_block = nn.Sequential(
            nn.Conv2d(config.in_channels, config.model_channels, 3, padding=1)
        )

    def forward(self, hint: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """hint: (B, 4, h, w) LQ latent; sample: (B, 4, h, w) the UNet's input -> list of 10 feature maps (SDXL)."""
        dtype = self.conv_in.weight.dtype
        hint, sample = hint.to(dtype), sample.to(dtype)
        context, y = encoder_hidden_states.to(dtype), y.to(dtype)
        emb = self.time_embedding(self.time_proj(timestep).to(dtype)) + self.add_embedding(y)
        h = self.conv_in(sample) + self.input_hint_block(hint)
        features = [h]
        for block in self.down_blocks:
            for i, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                attn = _attention(block, i)
                if attn is not None:
                    h = attn(h, encoder_hidden_states=context, return_dict=False)[0]
                features.append(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
                features.append(h)
        features.append(self.mid_block(h, emb, encoder_hidden_states=context))
        return features
