"""GLVControl: SUPIR's control network, a trainable copy of the SDXL UNet encoder.

It reads the same noisy latent as the UNet (`sample`), plus the low-quality latent (`hint`) that
enters through one 3x3 conv added to the first block's output. Its outputs (every encoder block
and the middle block) feed the UNet's ZeroSFT/ZeroCrossAttn connectors.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RefinerConfig
from .unet import SDXLEncoderModule, run_down_blocks


class GLVControl(SDXLEncoderModule):
    """Encoder + middle block of an SDXL UNet with a hint input; names follow diffusers + `input_hint_block`."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__(config)
        # the seed's TimestepEmbedSequential(conv) keeps the ".0" in the checkpoint name
        self.input_hint_block = nn.Sequential(nn.Conv2d(config.in_channels, config.model_channels, 3, padding=1))

    def forward(self, hint: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """hint: (B, 4, h, w) LQ latent; sample: (B, 4, h, w) the UNet's input -> list of 10 feature maps (SDXL)."""
        dtype = self.conv_in.weight.dtype
        hint, sample = hint.to(dtype), sample.to(dtype)
        context, y = encoder_hidden_states.to(dtype), y.to(dtype)
        emb = self.embed(timestep, y)
        h = self.conv_in(sample) + self.input_hint_block(hint)
        features = [h, *run_down_blocks(self.down_blocks, h, emb, context)]
        features.append(self.mid_block(features[-1], emb, encoder_hidden_states=context))
        return features
