"""Progress reporting and cancellation: the core calls a callback; the caller shows it.

The core never prints progress. A CLI passes a tqdm-backed callback, ComfyUI a ProgressBar-backed
one. A callback stops a run by raising :class:`rsvl_core.errors.Cancelled` (or any exception).
"""

from __future__ import annotations

from typing import Protocol

import torch


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
