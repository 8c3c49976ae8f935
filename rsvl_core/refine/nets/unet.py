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
from torch import nn

from .config import RefinerConfig
from .connectors import build_connectors


def _attention(block: nn.Module, index: int) -> nn.Module | None:
    attentions = getattr(block, "attentions", None)
    return attentions[index] if attentions is not None else None


def run_down_blocks(down_blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
                    ) -> list[torch.Tensor]:
    """SDXL's encoder after conv_in: the output of every ResBlock(+transformer) and downsampler, in order."""
    outputs = []
    for block in down_blocks:
        for i, resnet in enumerate(block.resnets):
            h = resnet(h, emb)
            attn = _attention(block, i)
            if attn is not None:
                h = attn(h, encoder_hidden_states=context, return_dict=False)[0]
            outputs.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h)
            outputs.append(h)
    return outputs


def _takes_emb(layer: nn.Module) -> bool:
    return hasattr(layer, "time_emb_proj")  # a ResnetBlock2D (a downsampler takes no embedding)


class SDXLEncoderModule(nn.Module):
    """What the UNet and GLVControl share: SDXL's embeddings, encoder and middle block (diffusers modules).

    The blocks are taken from a diffusers UNet2DConditionModel built from the config, so their
    names and numerics are diffusers'; `extra_parts` names further modules to keep (the decoder).
    """

    extra_parts: tuple[str, ...] = ()

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        from diffusers import UNet2DConditionModel  # on use: seconds to import

        parts = UNet2DConditionModel(**config.to_diffusers_unet_kwargs())
        names = ("conv_in", "time_proj", "time_embedding", "add_embedding", "down_blocks", "mid_block")
        for name in names + self.extra_parts:
            setattr(self, name, getattr(parts, name))

    def embed(self, timestep: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """timestep: (B,) discrete DDPM indices; y: (B, adm_in) vector conditioning -> (B, 4*model_channels)."""
        t_emb = self.time_proj(timestep).to(y.dtype)
        return self.time_embedding(t_emb) + self.add_embedding(y)


class RefinerUNet(SDXLEncoderModule):
    """SDXL UNet + the 12 SUPIR connectors (`project_modules`), predicting epsilon.

    State-dict names are diffusers' UNet2DConditionModel names plus `project_modules.*`, so the
    weights of a diffusers SDXL folder load directly and single-file (LDM) names convert by a
    fixed table (see `ldm_keys.py`).
    """

    extra_parts = ("up_blocks", "conv_norm_out", "conv_act", "conv_out")

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__(config)
        self.project_modules = build_connectors(config)

    # 2. encoder (no control) ---------------------------------------------------------------------
    def forward_encoder(self, sample: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """sample: (B, 4, h, w) scaled latent -> (last encoder output, the skip list incl. it)."""
        h = self.conv_in(sample)
        skips = [h, *run_down_blocks(self.down_blocks, h, emb, context)]
        return skips[-1], skips

    def encoder_layers(self) -> list[tuple[nn.Module, nn.Module | None]]:
        """The encoder after conv_in as a flat list of (layer, attention or None), one per skip."""
        layers: list[tuple[nn.Module, nn.Module | None]] = []
        for block in self.down_blocks:
            layers += [(resnet, _attention(block, i)) for i, resnet in enumerate(block.resnets)]
            if block.downsamplers is not None:
                layers.append((block.downsamplers[0], None))
        return layers

    def forward_encoder_partial(self, sample: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                                depth: int = 0) -> list[torch.Tensor]:
        """The first `depth` encoder outputs after conv_in (0 = all): the skips so far, for a step cache."""
        return self._resume(skips=[self.conv_in(sample)], emb=emb, context=context, depth=depth)

    def resume_encoder(self, skips: list[torch.Tensor], emb: torch.Tensor, context: torch.Tensor,
                       depth: int = 0) -> list[torch.Tensor]:
        """Continue a partial encoder pass (from `forward_encoder_partial`) up to `depth` outputs (0 = all)."""
        return self._resume(skips, emb, context, depth)

    def _resume(self, skips: list[torch.Tensor], emb: torch.Tensor, context: torch.Tensor,
                depth: int) -> list[torch.Tensor]:
        # one body for both entry points, so compiling them separately (refine/fast_paths.py) never nests
        layers = self.encoder_layers()
        stop = len(layers) if depth <= 0 else min(depth, len(layers))
        skips = list(skips)
        h = skips[-1]
        for layer, attn in layers[len(skips) - 1:stop]:
            h = layer(h, emb) if attn is not None or _takes_emb(layer) else layer(h)
            if attn is not None:
                h = attn(h, encoder_hidden_states=context, return_dict=False)[0]
            skips.append(h)
        return skips

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
