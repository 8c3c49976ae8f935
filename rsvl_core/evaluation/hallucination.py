"""Hallucination, omission and improvement: the correctness metrics of the opensr-test benchmark.

Definitions (Aybar et al., "A comprehensive benchmark for optical remote-sensing image super-resolution",
IEEE GRSL 2024; `opensr-test` 1.3.3, `Metrics.compute`'s correctness part), per HR pixel inside a border of
`scale` pixels:
- LR↑ = the LR image upsampled by the scale (bilinear, as opensr-test's zero-parameter model);
- nd(x, y) = mean over bands of |x - y| / |x + y + 1e-8| (the normalised difference);
- d_ref = nd(LR↑, HR), d_im = nd(SR, HR) / d_ref, d_om = nd(SR, LR↑) / d_ref;
- only pixels where d_ref, nd(SR, HR) or nd(SR, LR↑) exceeds the 75th percentile of d_ref are scored;
- scores: improvement I = d_im + d_om (1 - exp(-0.05 (d_im + d_om - 1))), omission
  O = d_om + d_im (1 - exp(-0.05 (d_im + d_om - 1))), hallucination H = exp(-0.05 d_im d_om);
- each scored pixel belongs to the class whose score is lowest (softmin, temperature 0.25, then argmax);
  `improvement_pct`, `omission_pct`, `hallucination_pct` = 100 x the share of scored pixels in each class.
So SR = HR is all improvement, SR = LR↑ all omission, and detail far from both HR and LR↑ is hallucination.

opensr-test also "harmonises" SR before this (histogram matching to HR, sub-pixel alignment): we do not,
because the protocol's LR is made from HR (co-registered by construction) and a colour shift is a fault of
the method that the tables should show. When the `opensr-test` package is installed, it computes these
numbers (`Metrics(..., harm_apply_spectral=False, harm_apply_spatial=False, correctness_norm="percent")`);
otherwise our implementation of the same definitions does. tests/test_eval_hallucination.py checks that
both agree.
"""

from __future__ import annotations

import importlib.util
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

CORRECTNESS_METRICS = ("hallucination_pct", "omission_pct", "improvement_pct")
IMPROVEMENT, OMISSION, HALLUCINATION = 0, 1, 2
LAMBDA_IMPROVEMENT, LAMBDA_OMISSION, LAMBDA_HALLUCINATION = 0.05, 0.05, 0.05  # opensr-test Config defaults
SOFTMIN_TEMPERATURE = 0.25
THRESHOLD_PERCENTILE = 0.75
EPSILON = 1e-8


@dataclass
class Correctness:
    """The three percentages and the per-pixel class map (HR grid inside the border; NaN = not scored)."""

    percentages: dict[str, float]
    classes: torch.Tensor           # (H - 2 border, W - 2 border) float: 0 improvement, 1 omission, 2 hallucination
    implementation: str


def opensr_test_version() -> str | None:
    """The installed opensr-test version, or None when it is not installed."""
    if importlib.util.find_spec("opensr_test") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opensr-test")
    except PackageNotFoundError:
        return None


def upsample_lr(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR↑ as opensr-test makes it: (1, C, h, w) -> (1, C, h s, w s), bilinear (antialias flag as theirs)."""
    return torch.nn.functional.interpolate(lr.float(), scale_factor=scale, mode="bilinear", antialias=True)


def normalised_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """nd(x, y) per pixel: mean over bands of |x - y| / |x + y + 1e-8|; (C, H, W) -> (H, W)."""
    return torch.nanmean(torch.abs(x - y) / torch.abs(x + y + EPSILON), dim=0)


def correctness(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int,
                use_package: bool = True) -> Correctness:
    """The opensr-test correctness of SR (1, 3, H, W) given LR (1, 3, H/s, W/s) and HR, border = `scale`."""
    if use_package and opensr_test_version() is not None:
        return _with_opensr_test(lr, sr, hr, scale)
    return _ours(lr, sr, hr, scale)


def _ours(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int) -> Correctness:
    # 1. crop the border (HR grid: `scale` pixels; LR grid: one pixel), LR to the HR grid
    border, lr_border = scale, 1
    hr_c = hr[0, :, border:-border, border:-border].float()
    sr_c = sr[0, :, border:-border, border:-border].float()
    lr_up = upsample_lr(lr[..., lr_border:-lr_border, lr_border:-lr_border], scale)[0]
    # 2. distances, and the pixels worth scoring (any distance above the 75th percentile of d_ref)
    d_ref = normalised_difference(lr_up, hr_c)
    d_sr_hr = normalised_difference(sr_c, hr_c)
    d_sr_lr = normalised_difference(sr_c, lr_up)
    threshold = d_ref.flatten().kthvalue(max(1, int(THRESHOLD_PERCENTILE * d_ref.numel()))).values.item()
    mask = ((d_ref > threshold) | (d_sr_hr > threshold) | (d_sr_lr > threshold)).float()
    mask[mask == 0] = torch.nan
    # 3. distances relative to LR↑'s own distance to HR, and the three scores
    d_im = (d_sr_hr * mask) / (d_ref * mask)
    d_om = (d_sr_lr * mask) / (d_ref * mask)
    spread = d_im + d_om - 1
    improvement = d_im + d_om * (1 - torch.exp(-spread * LAMBDA_IMPROVEMENT))
    omission = d_om + d_im * (1 - torch.exp(-spread * LAMBDA_OMISSION))
    hallucination = torch.exp(-d_im * d_om * LAMBDA_HALLUCINATION)
    # 4. the lowest score wins (softmin + argmax); percentages of the scored pixels
    stack = torch.stack([improvement, omission, hallucination])
    weights = torch.exp(-stack / SOFTMIN_TEMPERATURE)
    weights = weights / weights.sum(0)
    classes = torch.argmax(weights, dim=0) * mask
    scored = torch.nansum(mask)
    shares = [(torch.sum(classes == k) / scored).item() for k in (IMPROVEMENT, OMISSION, HALLUCINATION)]
    return Correctness(_percentages(shares), classes, "rsvl (opensr-test 1.3.3 definitions)")


def _percentages(shares: list[float]) -> dict[str, float]:
    improvement, omission, hallucination = (100.0 * s for s in shares)
    return {"hallucination_pct": hallucination, "omission_pct": omission, "improvement_pct": improvement}


@contextmanager
def _global_state_kept():
    """opensr-test seeds every RNG and switches cuDNN flags; put them back so the pipeline's runs stay as
    reproducible as they were."""
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def _with_opensr_test(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int) -> Correctness:
    from opensr_test.main import Metrics

    with _global_state_kept():
        metrics = Metrics(device="cpu", border_mask=scale, harm_apply_spectral=False, harm_apply_spatial=False,
                          correctness_norm="percent", correctness_distance="nd", agg_method="pixel")
        result = metrics.correctness(lr=lr[0].float().cpu(), sr=sr[0].float().cpu(), hr=hr[0].float().cpu(),
                                     gradient_threshold="auto")
    shares = [float(result["im_metric"]), float(result["om_metric"]), float(result["ha_metric"])]
    return Correctness(_percentages(shares), metrics.classification.float().cpu(),
                       f"opensr-test {opensr_test_version()}")
