"""One sampler step's guided D(x): the plain CFG call, latent tiling, and the first-block step cache.

`GuidedDenoiser` is what `sample_restore_edm` calls at every step. Without a cache it is one
network call on the CFG batch (per latent tile when tiling). With a cache it first runs only the
start of the UNet encoder (the signal; no control network needed) on every tile batch and hands it to
the shared `CachedEvaluator`, which reuses the last computed result or finishes the same evaluation
(nothing is recomputed).
"""

from __future__ import annotations

import torch

from ..cache.evaluator import CachedEvaluator
from ..cache.policy import CachePolicy
from ..tiling import blend_batches, plan_tiles, run_tiled, tile_batches
from .networks import ConditionedNetworks, EncoderState
from .sampler import EpsDenoiser


class GuidedDenoiser:
    """(x, sigma_hat, cfg_scale, control_scale, step) -> guided D, (B, 4, h, w) float32.

    Args:
        networks: control net + UNet bound to the image's conditioning and LQ latent.
        tile_size / overlap / tile_batch: latent tiling (tile_size 0 = one pass).
        cache: the step-cache policy; `steps` the run's length (for protected first/last steps).
    """

    def __init__(self, networks: ConditionedNetworks, steps: int, tile_size: int = 0, overlap: int = 0,
                 tile_batch: int = 1, cache: CachePolicy | None = None) -> None:
        self.networks = networks
        self.denoiser = EpsDenoiser()
        self.tile_size, self.overlap, self.tile_batch = tile_size, overlap, max(1, tile_batch)
        lat_h, lat_w = networks.lq_latent.shape[-2:]
        self.tiled = tile_size > 0 and (lat_h > tile_size or lat_w > tile_size)
        self.tiles = plan_tiles(lat_h, lat_w, tile_size, overlap) if self.tiled else []
        self.cache = CachedEvaluator(cache or CachePolicy(), steps)

    @property
    def tile_count(self) -> int:
        return max(1, len(self.tiles))

    def __call__(self, x: torch.Tensor, sigma_hat: float, cfg_scale: float, control_scale: float,
                 step: int) -> torch.Tensor:
        if not self.cache.policy.enabled:
            return self._plain(x, sigma_hat, cfg_scale, control_scale)
        _, sigma_q = self.denoiser.quantize(sigma_hat)
        return self.cache.step(
            self._signals(x, sigma_hat),
            signal=lambda state: state.signal,
            finish=lambda states: self._finish(x, states, sigma_q, cfg_scale, control_scale),
            remember=lambda denoised: {"denoised": denoised, "eps": (x - denoised) / sigma_q},
            replay=lambda kept: self._reuse(kept, x, sigma_q),
            step=step,
        )

    # no cache: one call (per tile group) ----------------------------------------------------------
    def _plain(self, x: torch.Tensor, sigma_hat: float, cfg_scale: float, control_scale: float) -> torch.Tensor:
        if not self.tiled:
            return self.denoiser.guided(self.networks, x, sigma_hat, cfg_scale, control_scale)

        def one_group(stack: torch.Tensor) -> torch.Tensor:
            x_tiles, lq_tiles = stack[:, :4], stack[:, 4:]

            def eps(x_in: torch.Tensor, timesteps: torch.Tensor, scale: float) -> torch.Tensor:
                return self.networks(x_in, timesteps, scale, lq_latent=lq_tiles)

            return self.denoiser.guided(eps, x_tiles, sigma_hat, cfg_scale, control_scale)

        return run_tiled(one_group, self._stack(x), 4, self.tile_size, self.overlap, self.tile_batch)

    def _stack(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.networks.lq_latent.to(x.dtype)], dim=1)

    # cache: signal first, then reuse or finish ------------------------------------------------------
    def _groups(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(x tiles, LQ tiles) per tile batch, in `tile_batches` order."""
        if not self.tiled:
            return [(x, None)]
        return [(batch[:, :4], batch[:, 4:])
                for batch in tile_batches(self._stack(x), self.tile_size, self.overlap, self.tile_batch)]

    def _signals(self, x: torch.Tensor, sigma_hat: float) -> list[EncoderState]:
        states = []
        for x_part, lq_part in self._groups(x):
            batch, timesteps, _ = self.denoiser.network_inputs(x_part, sigma_hat)
            states.append(self.networks.signal(batch, timesteps, self.cache.policy.signal_depth, lq_part))
        return states

    def _finish(self, x: torch.Tensor, states: list[EncoderState], sigma_q: float, cfg_scale: float,
                control_scale: float) -> torch.Tensor:
        if not self.tiled:
            eps = self.networks.finish(states[0], control_scale)
            return self.denoiser.denoised(x, eps, sigma_q, cfg_scale)
        outputs = [self.denoiser.denoised(x_part, self.networks.finish(state, control_scale), sigma_q, cfg_scale)
                   for (x_part, _), state in zip(self._groups(x), states, strict=True)]
        return blend_batches(outputs, self._stack(x), 4, self.tile_size, self.overlap, self.tile_batch)

    def _reuse(self, kept, x: torch.Tensor, sigma_q: float) -> torch.Tensor:
        if self.cache.policy.reuse == "denoised":
            return kept["denoised"]                   # the seed: the previous D as is
        return x - kept["eps"] * sigma_q              # ours: the previous guided epsilon at this x, sigma
