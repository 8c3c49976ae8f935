"""The CFG network call: control net + UNet on the batch [uncond; cond], bound to one image's conditioning."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .control import GLVControl
from .unet import RefinerUNet


@dataclass
class Conditioning:
    """Text conditioning of one side of CFG: cross-attention context and the SDXL vector."""

    context: torch.Tensor  # (B, T, context_dim)
    vector: torch.Tensor   # (B, adm_in)


class ConditionedNetworks:
    """eps(x_in, timesteps, control_scale) for the CFG batch, as the seed's ControlWrapper computes it.

    The control net reads the same noisy input as the UNet, the LQ latent as its hint, and the
    same text conditioning; uncond and cond share the hint (the seed passes the same `control`).
    """

    def __init__(self, unet: RefinerUNet, control: GLVControl, cond: Conditioning, uncond: Conditioning,
                 hint: torch.Tensor) -> None:
        if cond.context.shape != uncond.context.shape:
            raise ValueError(
                f"cond and uncond contexts must have the same shape for one CFG batch, got "
                f"{tuple(cond.context.shape)} and {tuple(uncond.context.shape)}"
            )
        self.unet, self.control = unet, control
        self.context = torch.cat([uncond.context, cond.context])
        self.vector = torch.cat([uncond.vector, cond.vector])
        self.lq_latent = hint
        self.unet_calls = 0      # full UNet evaluations (CFG batches)
        self.control_calls = 0   # GLVControl evaluations
        self.signal_calls = 0    # partial encoder passes made for the step cache

    def _batch(self, x_in: torch.Tensor, lq_latent: torch.Tensor | None):
        lq = self.lq_latent if lq_latent is None else lq_latent
        repeat = x_in.shape[0] // self.context.shape[0]  # tiles per image in a tiled call
        context, vector = self.context, self.vector
        if repeat > 1:
            context, vector = context.repeat_interleave(repeat, 0), vector.repeat_interleave(repeat, 0)
        return torch.cat([lq, lq]), context, vector

    def control_features(self, x_in: torch.Tensor, timesteps: torch.Tensor, lq_latent: torch.Tensor | None = None
                         ) -> list[torch.Tensor]:
        """GLVControl's features for the CFG batch `x_in` (2N, 4, h, w)."""
        hint, context, vector = self._batch(x_in, lq_latent)
        self.control_calls += 1
        return self.control(hint, x_in, timesteps, context, vector)

    def __call__(self, x_in: torch.Tensor, timesteps: torch.Tensor, control_scale: float,
                 lq_latent: torch.Tensor | None = None) -> torch.Tensor:
        """x_in: (2N, 4, h, w) the CFG batch [uncond; cond] scaled by c_in -> epsilon (2N, 4, h, w).

        lq_latent: (N, 4, h, w) the LQ latent under x_in (a tile of it when tiling); default the whole one.
        """
        return self.finish(self._encode(x_in, timesteps, 0, lq_latent), control_scale)

    # --- the step cache's split call ---------------------------------------------------------------
    def signal(self, x_in: torch.Tensor, timesteps: torch.Tensor, depth: int = 0,
               lq_latent: torch.Tensor | None = None) -> EncoderState:
        """The start of the UNet encoder (no control needed): the cache signal and the state to resume from."""
        self.signal_calls += 1
        return self._encode(x_in, timesteps, depth, lq_latent)

    def _encode(self, x_in: torch.Tensor, timesteps: torch.Tensor, depth: int,
                lq_latent: torch.Tensor | None) -> EncoderState:
        """Embeddings and the first `depth` encoder outputs (0 = the whole encoder)."""
        with torch.inference_mode():
            _, context, vector = self._batch(x_in, lq_latent)
            dtype = self.unet.conv_in.weight.dtype
            emb = self.unet.embed(timesteps, vector.to(dtype))
            skips = self.unet.forward_encoder_partial(x_in.to(dtype), emb, context.to(dtype), depth)
            return EncoderState(skips, emb, x_in, timesteps, lq_latent)

    def finish(self, state: EncoderState, control_scale: float) -> torch.Tensor:
        """Complete a step begun by `signal`: rest of the encoder, control net, middle and decoder -> epsilon."""
        with torch.inference_mode():
            _, context, vector = self._batch(state.x_in, state.lq_latent)
            dtype = self.unet.conv_in.weight.dtype
            context = context.to(dtype)
            skips = self.unet.resume_encoder(state.skips, state.emb, context)
            features = [f.to(dtype) for f in self.control_features(state.x_in, state.timesteps, state.lq_latent)]
            self.unet_calls += 1
            return self.unet.forward_decoder(skips[-1], skips, state.emb, context, features, control_scale)


@dataclass
class EncoderState:
    """A UNet evaluation paused after part of its encoder (for the step cache)."""

    skips: list[torch.Tensor]
    emb: torch.Tensor
    x_in: torch.Tensor
    timesteps: torch.Tensor
    lq_latent: torch.Tensor | None

    @property
    def signal(self) -> torch.Tensor:
        return self.skips[-1]
