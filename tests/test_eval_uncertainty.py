"""`rsvl eval --samples N`: how well the spread predicts the error (Spearman rho, error by uncertainty decile)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvl_core.evaluation.uncertainty import average_ranks, spearman, uncertainty_vs_error


def test_uncertainty_ranks_share_ties():
    assert average_ranks(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)
    assert spearman(np.ones(5), np.arange(5.0)) is None


def _reference(h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.rand((1, 3, h, w), generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25


def test_uncertainty_eval_related_by_construction_gives_rho_near_one():
    hr = _reference()
    spread = torch.rand((64, 64), generator=torch.Generator().manual_seed(2))  # how unsure each pixel is
    sign = torch.where(torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(3)) > 0.5, 1.0, -1.0)
    sr = hr + sign * 0.2 * spread                                               # error grows with the spread
    out = uncertainty_vs_error(spread, sr, hr)
    assert out["std_error_spearman"] > 0.98
    assert out["error_most_uncertain"] > 5 * out["error_least_uncertain"]
    assert out["error_most_uncertain"] == pytest.approx(0.2 * 255 * 0.95, rel=0.05)  # top decile ~ 0.9..1.0


def test_uncertainty_eval_unrelated_gives_rho_near_zero():
    hr = _reference()
    spread = torch.rand((64, 64), generator=torch.Generator().manual_seed(4))
    noise = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(5)) - 0.5
    sr = hr + 0.2 * noise                                                       # error independent of the spread
    out = uncertainty_vs_error(spread, sr, hr)
    assert abs(out["std_error_spearman"]) < 0.05                               # 4096 pixels: sd of rho ~ 0.016
    assert out["error_most_uncertain"] == pytest.approx(out["error_least_uncertain"], rel=0.15)


def test_uncertainty_eval_leaves_the_border_out():
    hr = _reference(32, 32)
    sr = hr.clone()
    sr[..., :2, :] = 1.0                                                        # a wrong border only
    spread = torch.zeros(32, 32)
    spread[:2] = 5.0
    inner = uncertainty_vs_error(spread + torch.rand(32, 32) * 0.01, sr, hr, border=2)
    assert inner["error_most_uncertain"] == 0.0 and inner["error_least_uncertain"] == 0.0
