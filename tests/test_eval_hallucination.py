"""opensr-test's correctness metrics on constructed cases, and our implementation equal to the package's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from rsvl_testing import REPO

from rsvl_core.evaluation.degrade import bicubic_downsample
from rsvl_core.evaluation.hallucination import (
    HALLUCINATION,
    correctness,
    opensr_test_version,
    upsample_lr,
)

DATA = REPO.parent / "shared" / "data"
SCALE = 2


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    if not (DATA / "SOAP_031.png").is_file():
        pytest.skip(f"{DATA}: the shared CC0 sample images are absent")
    array = np.asarray(Image.open(DATA / "SOAP_031.png").convert("RGB"), dtype=np.float32)[100:164, 100:164] / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def aligned_lr_up(lr: torch.Tensor, shape) -> torch.Tensor:
    """LR↑ exactly as the metric sees it inside its border (the LR cropped by one pixel, then upsampled)."""
    sr = torch.zeros(shape)
    sr[..., SCALE:-SCALE, SCALE:-SCALE] = upsample_lr(lr[..., 1:-1, 1:-1], SCALE)
    return sr


def structured_detail(hr: torch.Tensor) -> torch.Tensor:
    """HR plus a high-contrast stripe pattern that neither HR nor the LR image contains."""
    stripes = torch.sign(torch.sin(torch.arange(hr.shape[-1]) * 2.1)).view(1, 1, 1, -1)
    return (hr + 0.35 * stripes).clamp(0, 1)


@pytest.mark.parametrize("use_package", [False, True])
def test_eval_correctness_constructed_cases(hr, use_package):
    if use_package and opensr_test_version() is None:
        pytest.skip("opensr-test is not installed")
    lr = bicubic_downsample(hr, SCALE)
    same = correctness(lr, hr.clone(), hr, SCALE, use_package)
    assert same.percentages["improvement_pct"] == pytest.approx(100.0)
    assert same.percentages["omission_pct"] == 0 and same.percentages["hallucination_pct"] == 0
    omitted = correctness(lr, aligned_lr_up(lr, hr.shape), hr, SCALE, use_package)
    assert omitted.percentages["omission_pct"] == pytest.approx(100.0)
    plain_up = correctness(lr, upsample_lr(lr, SCALE), hr, SCALE, use_package)  # edges differ by the crop
    assert plain_up.percentages["omission_pct"] > 95
    invented = correctness(lr, structured_detail(hr), hr, SCALE, use_package)
    assert invented.percentages["hallucination_pct"] > 90
    assert sum(invented.percentages.values()) == pytest.approx(100.0)
    assert invented.classes.shape == (hr.shape[-2] - 2 * SCALE, hr.shape[-1] - 2 * SCALE)
    assert (invented.classes == HALLUCINATION).float().mean() > 0.2  # scored pixels only; others NaN


def test_eval_our_correctness_equals_opensr_test(hr):
    if opensr_test_version() is None:
        pytest.skip("opensr-test is not installed: nothing to compare our implementation with")
    lr = bicubic_downsample(hr, SCALE)
    noise = torch.rand(hr.shape, generator=torch.Generator().manual_seed(0))
    for sr in (upsample_lr(lr, SCALE), structured_detail(hr), (0.7 * hr + 0.3 * noise), noise):
        ours, package = correctness(lr, sr, hr, SCALE, False), correctness(lr, sr, hr, SCALE, True)
        assert package.implementation.startswith("opensr-test")
        assert ours.percentages == pytest.approx(package.percentages, abs=1e-9)
        assert torch.equal(torch.isnan(ours.classes), torch.isnan(package.classes))
        scored = ~torch.isnan(ours.classes)
        assert torch.equal(ours.classes[scored], package.classes[scored])


def test_eval_opensr_test_leaves_the_random_state_alone(hr):
    if opensr_test_version() is None:
        pytest.skip("opensr-test is not installed")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    benchmark = torch.backends.cudnn.benchmark
    correctness(bicubic_downsample(hr, SCALE), hr, hr, SCALE, True)  # the package seeds every RNG with 42
    assert torch.equal(torch.rand(3), expected)
    assert torch.backends.cudnn.benchmark == benchmark
