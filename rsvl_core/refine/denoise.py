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
from ..kit.tiling import TileFit, TileGrid, plan_tiles
from .nets.cfg import ConditionedNetworks, EncoderState
from .sampler import EpsDenoiser

MIN_LATENT_TILE = 16  # latent pixels (128 image pixels): where halving the tile after running out of memory stops
LATENT_TILE_MULTIPLE = 8  # the UNet's strides: latent tiles stay whole multiples


class GuidedDenoiser:
    """(x, sigma_hat, cfg_scale, control_scale, step) -> guided D, (B, 4, h, w) float32.

    Args:
        networks: control net + UNet bound to the image's conditioning and LQ latent.
        tile_size / overlap / tile_batch: latent tiling (tile_size 0 = one pass). Out of memory, a step is
            evaluated again with the tile halved, and later steps keep it (`fit`, a `TileFit`, says what was used).
        cache: the step-cache policy; `steps` the run's length (for protected first/last steps).
    """

    def __init__(self, networks: ConditionedNetworks, steps: int, tile_size: int = 0, overlap: int = 0,
                 tile_batch: int = 1, cache: CachePolicy | None = None) -> None:
        self.networks = networks
        self.denoiser = EpsDenoiser()
        self.tile_batch = max(1, tile_batch)
        self.latent_size = tuple(networks.lq_latent.shape[-2:])
        self.fit = TileFit(tile_size, overlap, max(self.latent_size), MIN_LATENT_TILE, LATENT_TILE_MULTIPLE,
                           stage="refiner latent")
        self.cache = CachedEvaluator(cache or CachePolicy(), steps)

    @property
    def tile_count(self) -> int:
        """Latent tiles per step at the tile size in use."""
        return len(plan_tiles(*self.latent_size, self.fit.tile_size, self.fit.overlap)) if self._tiled() else 1

    def _tiled(self, tile_size: int | None = None) -> bool:
        tile_size = self.fit.tile_size if tile_size is None else tile_size
        return tile_size > 0 and max(self.latent_size) > tile_size

    def __call__(self, x: torch.Tensor, sigma_hat: float, cfg_scale: float, control_scale: float,
                 step: int) -> torch.Tensor:
        return self.fit.run(lambda tile_size, overlap: self._step(x, sigma_hat, cfg_scale, control_scale, step,
                                                                  tile_size, overlap))

    def _step(self, x: torch.Tensor, sigma_hat: float, cfg_scale: float, control_scale: float, step: int,
              tile_size: int, overlap: int) -> torch.Tensor:
        grid = TileGrid.plan(*self.latent_size, tile_size, overlap, self.tile_batch) if self._tiled(tile_size) else None
        if not self.cache.policy.enabled:
            return self._plain(x, sigma_hat, cfg_scale, control_scale, grid)
        _, sigma_q = self.denoiser.quantize(sigma_hat)
        return self.cache.step(
            self._signals(x, sigma_hat, grid),
            signal=lambda state: state.signal,
            finish=lambda states: self._finish(x, states, sigma_q, cfg_scale, control_scale, grid),
            remember=lambda denoised: {"denoised": denoised, "eps": (x - denoised) / sigma_q},
            replay=lambda kept: self._reuse(kept, x, sigma_q),
            step=step,
            layout=(tile_size, overlap),
        )

    # no cache: one call (per tile group) ----------------------------------------------------------
    def _plain(self, x: torch.Tensor, sigma_hat: float, cfg_scale: float, control_scale: float,
               grid: TileGrid | None) -> torch.Tensor:
        if grid is None:
            return self.denoiser.guided(self.networks, x, sigma_hat, cfg_scale, control_scale)

        def one_group(stack: torch.Tensor) -> torch.Tensor:
            x_tiles, lq_tiles = stack[:, :4], stack[:, 4:]

            def eps(x_in: torch.Tensor, timesteps: torch.Tensor, scale: float) -> torch.Tensor:
                return self.networks(x_in, timesteps, scale, lq_latent=lq_tiles)

            return self.denoiser.guided(eps, x_tiles, sigma_hat, cfg_scale, control_scale)

        stack = self._stack(x)
        return grid.blend(one_group(batch) for batch in grid.batches(stack))

    def _stack(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.networks.lq_latent.to(x.dtype)], dim=1)

    # cache: signal first, then reuse or finish ------------------------------------------------------
    def _groups(self, x: torch.Tensor, grid: TileGrid | None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(x tiles, LQ tiles) per tile batch, in the grid's order."""
        if grid is None:
            return [(x, None)]
        return [(batch[:, :4], batch[:, 4:]) for batch in grid.batches(self._stack(x))]

    def _signals(self, x: torch.Tensor, sigma_hat: float, grid: TileGrid | None) -> list[EncoderState]:
        states = []
        for x_part, lq_part in self._groups(x, grid):
            batch, timesteps, _ = self.denoiser.network_inputs(x_part, sigma_hat)
            states.append(self.networks.signal(batch, timesteps, self.cache.policy.signal_depth, lq_part))
        return states

    def _finish(self, x: torch.Tensor, states: list[EncoderState], sigma_q: float, cfg_scale: float,
                control_scale: float, grid: TileGrid | None) -> torch.Tensor:
        if grid is None:
            eps = self.networks.finish(states[0], control_scale)
            return self.denoiser.denoised(x, eps, sigma_q, cfg_scale)
        outputs = [self.denoiser.denoised(x_part, self.networks.finish(state, control_scale), sigma_q, cfg_scale)
                   for (x_part, _), state in zip(self._groups(x, grid), states, strict=True)]
        return grid.blend(outputs)

    def _reuse(self, kept, x: torch.Tensor, sigma_q: float) -> torch.Tensor:
        if self.cache.policy.reuse == "denoised":
            return kept["denoised"]                   # the seed: the previous D as is
        return x - kept["eps"] * sigma_q              # ours: the previous guided epsilon at this x, sigma
