"""The refiner's UNet: SDXL's blocks (from diffusers) with our forward, where SUPIR injects control.

SUPIR (and the seed's LightGLVUNet) replace every skip concatenation of the SDXL decoder by a
ZeroSFT connector and add a ZeroCrossAttn before each upsampler. diffusers' UNet forward has no
seam for that, so we own the loop and reuse only its blocks. The forward is split in two so a
step cache can look at the encoder output before paying for the decoder:

    emb = unet.embed(timestep, y)
    h, skips = unet.forward_encoder(sample, emb, context)        # the seed's "input_stage1"
    eps = unet.forward_decoder(h, skips, emb, context, control)  # middle block + decoder
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .config import RefinerConfig
from .connectors import build_connectors


def build_sdxl_unet_parts(config: RefinerConfig) -> UNet2DConditionModel:
    """An SDXL-shaped diffusers UNet whose modules we borrow (built on the current default device)."""
    return UNet2DConditionModel(**config.to_diffusers_unet_kwargs())


def _attention(block: nn.Module, index: int) -> nn.Module | None:
    attentions = getattr(block, "attentions", None)
    return attentions[index] if attentions is not None else None


class RefinerUNet(nn.Module):
    """SDXL UNet + the 12 SUPIR connectors (`project_modules`), predicting epsilon.

    State-dict names are diffusers' UNet2DConditionModel names plus `project_modules.*`, so the
    weights of a diffusers SDXL folder load directly and single-file (LDM) names convert by a
    fixed table (see `ldm_keys.py`).
    """

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
        self.up_blocks = parts.up_blocks
        self.conv_norm_out = parts.conv_norm_out
        self.conv_act = parts.conv_act
        self.conv_out = parts.conv_out
        self.project_modules = build_connectors(config)

    # 1. embeddings -----------------------------------------------------------------------------
    def embed(self, timestep: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """timestep: (B,) discrete DDPM indices; y: (B, adm_in) vector conditioning -> (B, 4*model_channels)."""
        t_emb = self.time_proj(timestep).to(y.dtype)
        return self.time_embedding(t_emb) + self.add_embedding(y)

    # 2. encoder (no control) ---------------------------------------------------------------------
    def forward_encoder(self, sample: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """sample: (B, 4, h, w) scaled latent -> (last encoder output, the skip list incl. it)."""
        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            for i, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                attn = _attention(block, i)
                if attn is not None:
                    h = attn(h, encoder_hidden_states=context, return_dict=False)[0]
                skips.append(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
                skips.append(h)
        return h, skips

    # 3. middle + decoder with control injection --------------------------------------------------
    def forward_decoder(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor,
                        context: torch.Tensor, control: list[torch.Tensor], control_scale: float = 1.0
                        ) -> torch.Tensor:
        """Consumes `skips` (a copy is popped) and `control` (GLVControl's outputs) -> epsilon (B, 4, h, w)."""
        skips = list(skips)
        connector = len(self.project_modules) - 1
        k = len(control) - 1
        h = self.mid_block(h, emb, encoder_hidden_states=context)
        h = self.project_modules[connector](control[k], h, control_scale=control_scale)
        connector, k = connector - 1, k - 1
        for block in self.up_blocks:
            for i, resnet in enumerate(block.resnets):
                skip = skips.pop()
                # ZeroSFT replaces SDXL's torch.cat([h, skip])
                h = self.project_modules[connector](control[k], skip, h, control_scale=control_scale)
                connector -= 1
                h = resnet(h, emb)
                attn = _attention(block, i)
                if attn is not None:
                    h = attn(h, encoder_hidden_states=context, return_dict=False)[0]
                last = i == len(block.resnets) - 1
                if last and block.upsamplers is not None:
                    h = self.project_modules[connector](control[k], h, control_scale=control_scale)
                    connector -= 1
                    size = skips[-1].shape[-2:] if skips else None
                    h = block.upsamplers[0](h, output_size=size)
                k -= 1
        h = self.conv_act(self.conv_norm_out(h))
        return self.conv_out(h)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                y: torch.Tensor, control: list[torch.Tensor], control_scale: float = 1.0) -> torch.Tensor:
        """sample: (B, 4, h, w) latent already scaled by c_in; returns epsilon of the same shape."""
        dtype = self.conv_in.weight.dtype
        sample, context, y = sample.to(dtype), encoder_hidden_states.to(dtype), y.to(dtype)
        control = [c.to(dtype) for c in control]
        emb = self.embed(timestep, y)
        h, skips = self.forward_encoder(sample, emb, context)
        return self.forward_decoder(h, skips, emb, context, control, control_scale)
