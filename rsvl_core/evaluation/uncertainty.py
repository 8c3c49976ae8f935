"""Does the uncertainty layer tell where the errors are? Per image and method, with N >= 2 samples and a
reference: the Spearman rank correlation between per-pixel spread and per-pixel absolute error, and the mean
error in the most vs the least uncertain tenth of the pixels (the numbers that say whether to trust the layer).
"""

from __future__ import annotations

import numpy as np
import torch

UNCERTAINTY_METRICS = ("std_error_spearman", "error_most_uncertain", "error_least_uncertain")
DECILE = 0.1


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing their average rank (what Spearman's rho needs)."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (starts + (counts + 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally long 1-D arrays; None when either is constant."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else None


def uncertainty_vs_error(spread: torch.Tensor, output: torch.Tensor, reference: torch.Tensor,
                         border: int = 0) -> dict[str, float | None]:
    """spread (H, W) any units; output, reference (1, 3, H, W) in [0, 1] -> rho(spread, |error|) and the mean
    absolute error (8-bit levels, RGB mean) in the most and least uncertain 10 % of pixels (`border` px left out,
    as the reference metrics leave them out)."""
    error = (output.float() - reference.float()).abs().mean(dim=(0, 1)) * 255.0
    spread = spread.float().reshape(error.shape)
    if border:
        error, spread = error[border:-border, border:-border], spread[border:-border, border:-border]
    e, s = error.reshape(-1).cpu().numpy(), spread.reshape(-1).cpu().numpy()
    order = np.argsort(s, kind="stable")
    tenth = max(1, int(round(DECILE * order.size)))
    return {"std_error_spearman": spearman(s, e), "error_most_uncertain": float(e[order[-tenth:]].mean()),
            "error_least_uncertain": float(e[order[:tenth]].mean())}
