"""Step previews of a refinement: the denoised latent -> RGB through one linear map fitted to the refiner's VAE."""

from __future__ import annotations

import logging

import torch

from ..kit.progress import ProgressCallback

log = logging.getLogger("rsvl")


class LatentPreview:
    """A cheap latent -> RGB map for step previews: one linear map (C latent channels + bias -> RGB).

    Fitted once per image by least squares from the VAE's own encoding of a small copy of the input image, so it
    matches whatever VAE the refiner uses (no decode per step)."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights  # (C + 1, 3)

    @classmethod
    def fit(cls, latent: torch.Tensor, image: torch.Tensor) -> LatentPreview:
        """latent (1, C, h, w); image (1, 3, H, W) in [0, 1], resized to (h, w)."""
        latent = latent.detach().float().cpu()
        target = torch.nn.functional.interpolate(image.detach().float().cpu(), size=latent.shape[-2:], mode="area")
        x = torch.cat([latent[0].flatten(1), torch.ones(1, latent[0, 0].numel())]).T  # (N, C + 1)
        y = target[0].flatten(1).T                                                     # (N, 3)
        ridge = 1e-3 * torch.eye(x.shape[1])
        return cls(torch.linalg.solve(x.T @ x + ridge, x.T @ y))

    @classmethod
    def grey(cls, channels: int = 4) -> LatentPreview:
        weights = torch.zeros(channels + 1, 3)
        weights[0] = 0.2
        weights[-1] = 0.5
        return cls(weights)

    @classmethod
    def fit_to(cls, refiner, image: torch.Tensor) -> LatentPreview:
        """A map for this refiner's VAE from a <= 128 px copy of `image` (grey if anything fails: a preview must
        never fail the run)."""
        try:
            small = image[:1].float()
            factor = min(128 / max(small.shape[-2:]), 1.0)
            size = tuple(max(8, round(side * factor / 8) * 8) for side in small.shape[-2:])
            small = torch.nn.functional.interpolate(small, size=size, mode="area")
            vae = refiner.vae
            with torch.inference_mode():
                latent = vae.encode(small.to(device=refiner.device, dtype=next(vae.parameters()).dtype), tile_size=0)
            return cls.fit(latent, small)
        except Exception as exc:
            log.debug("rsvl: no latent preview map (%s)", exc)
            return cls.grey()

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent.detach().float().cpu()[:1]
        channels = latent.shape[1]
        if channels + 1 != self.weights.shape[0]:
            return latent[:, :1].expand(-1, 3, -1, -1).sigmoid()
        flat = torch.cat([latent[0].flatten(1), torch.ones(1, latent[0, 0].numel())]).T @ self.weights
        return flat.T.reshape(1, 3, *latent.shape[-2:]).clamp(0, 1)

    def rgb_previews(self, callback: ProgressCallback) -> ProgressCallback:
        """`callback` with its latent previews turned into RGB images through this map."""

        def report(step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
            if preview is not None and preview.shape[1] != 3:
                preview = self(preview)
            callback(step, total, stage, preview)

        return report
