"""Progress reporting and cancellation: the core calls a callback; the caller shows it.

The core never prints progress. A CLI passes a tqdm-backed callback, ComfyUI a ProgressBar-backed
one. A callback stops a run by raising :class:`rsvl_core.kit.errors.Cancelled` (or any exception).
"""

from __future__ import annotations

from typing import Protocol

import torch
from PIL import Image


class ProgressCallback(Protocol):
    def __call__(self, step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        """Report that ``step`` of ``total`` units of ``stage`` are done.

        ``preview``, when given, is a (B, 3, H, W) float image in [0, 1] (e.g. the current x0 estimate).
        """


def report(
    callback: ProgressCallback | None,
    step: int,
    total: int,
    stage: str,
    preview: torch.Tensor | None = None,
) -> None:
    """Call ``callback`` if there is one (keeps the samplers free of ``if callback`` noise)."""
    if callback is not None:
        callback(step, total, stage, preview)


def preview_image(image: torch.Tensor, max_size: int) -> Image.Image:
    """(B, 3, H, W) or (3, H, W) in [0, 1] -> the first image as RGB PIL, shrunk to at most max_size."""
    if image.ndim == 4:
        image = image[0]
    image = image.detach().float().clamp(0, 1)
    height, width = image.shape[-2:]
    factor = max_size / max(height, width) if max_size else 1.0
    if factor < 1:
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        image = torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]
    array = (image.movedim(0, -1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array, "RGB")
