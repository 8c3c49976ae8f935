"""rsvl eval's metrics and degradation: equal to scikit-image's PSNR/SSIM, the stated kernel, consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from rsvl_testing import REPO
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rsvl_core.evaluation.degrade import (
    DegradeOptions,
    bicubic_downsample,
    crop_to_multiple,
    degrade,
    upsample_baseline,
)
from rsvl_core.evaluation.metrics import consistency_metrics, reference_metrics, rgb_to_y

DATA = REPO.parent / "shared" / "data"


def natural_image(size: int = 48) -> torch.Tensor:
    """A crop of a real aerial image (or of the bundled sample when ../shared is absent)."""
    path = DATA / "SOAP_031.png"
    if not path.is_file():
        path = REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png"
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)[:size, :size] / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def as_hwc(image: torch.Tensor) -> np.ndarray:
    return image[0].permute(1, 2, 0).double().numpy()


def skimage_reference(sr: torch.Tensor, hr: torch.Tensor, border: int) -> dict[str, float]:
    """The same four numbers computed by scikit-image (Y by its rgb2ycbcr) on the cropped arrays."""
    s, h = as_hwc(sr)[border:-border, border:-border], as_hwc(hr)[border:-border, border:-border]
    sy, hy = rgb2ycbcr(s)[..., 0] / 255.0, rgb2ycbcr(h)[..., 0] / 255.0
    options = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return {"psnr_y": peak_signal_noise_ratio(hy, sy, data_range=1.0),
            "ssim_y": structural_similarity(hy, sy, **options),
            "psnr_rgb": peak_signal_noise_ratio(h, s, data_range=1.0),
            "ssim_rgb": structural_similarity(h, s, channel_axis=2, **options)}


@pytest.mark.parametrize("border", [2, 4])
def test_eval_psnr_ssim_equal_scikit_image(border):
    hr = natural_image()
    noisy = (hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    blurry = upsample_baseline(bicubic_downsample(hr, 2), 2, "bicubic")
    for sr in (noisy, blurry, torch.rand(hr.shape, generator=torch.Generator().manual_seed(2))):
        ours, theirs = reference_metrics(sr, hr, border), skimage_reference(sr, hr, border)
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-9, abs=1e-10), name


def test_eval_y_is_bt601_as_in_matlab():
    rgb = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(2))
    assert np.allclose(rgb_to_y(rgb)[0, 0].numpy(), rgb2ycbcr(as_hwc(rgb))[..., 0] / 255.0, atol=1e-12)
    assert rgb_to_y(torch.zeros(1, 3, 1, 1)).item() == pytest.approx(16 / 255)
    assert rgb_to_y(torch.ones(1, 3, 1, 1)).item() == pytest.approx(235 / 255)


def test_eval_identical_images_give_inf_psnr_and_unit_ssim():
    hr = natural_image(32)
    metrics = reference_metrics(hr.clone(), hr, 2)
    assert metrics["psnr_y"] == math.inf and metrics["psnr_rgb"] == math.inf
    assert metrics["ssim_y"] == pytest.approx(1.0, abs=1e-12) and metrics["ssim_rgb"] == pytest.approx(1.0, abs=1e-12)


def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """The stated kernel written out: Keys' cubic (a = -0.5) stretched by the scale, for each output pixel
    over the input pixels that exist, weights normalised to sum 1 (PIL's resampling rule), float64."""
    def keys(x: float, a: float = -0.5) -> float:
        x = abs(x)
        if x < 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        for j in range(low, high):
            matrix[i, j] = keys((j - centre + 0.5) / stretch)
        matrix[i] /= matrix[i].sum()
    return matrix


@pytest.mark.parametrize("scale", [2, 4])
def test_eval_degradation_is_the_stated_bicubic_kernel(scale):
    hr = natural_image(48)
    rows, columns = pil_bicubic_weights(48, 48 // scale), pil_bicubic_weights(48, 48 // scale)
    expected = np.clip(np.einsum("ij,cjk,lk->cil", rows, hr[0].double().numpy(), columns), 0, 1)
    got = bicubic_downsample(hr, scale)[0].double().numpy()
    assert got.shape == (3, 48 // scale, 48 // scale)
    assert np.abs(got - expected).max() < 2e-6
    # the protocol's LR: that, rounded to 8 bits; a flat image stays flat
    lr = degrade(hr, scale, DegradeOptions())
    assert torch.equal(lr, torch.from_numpy(expected).float()[None].mul(255).round().div(255))
    assert torch.allclose(bicubic_downsample(torch.full((1, 3, 16, 16), 0.3), scale), torch.tensor(0.3), atol=1e-6)


def test_eval_crop_to_multiple_reports_what_it_removes():
    image = torch.zeros(1, 3, 35, 33)
    cropped, removed = crop_to_multiple(image, 4)
    assert cropped.shape[-2:] == (32, 32) and removed == (3, 1)
    same, nothing = crop_to_multiple(torch.zeros(1, 3, 32, 16), 4)
    assert same.shape[-2:] == (32, 16) and nothing is None
    with pytest.raises(ValueError, match="smaller than the scale"):
        crop_to_multiple(torch.zeros(1, 3, 3, 9), 4)


def test_eval_robustness_options_change_the_lr_reproducibly():
    hr = natural_image(32)
    plain = degrade(hr, 2, DegradeOptions())
    noisy = degrade(hr, 2, DegradeOptions(noise_sigma=0.05), seed=3)
    assert torch.equal(noisy, degrade(hr, 2, DegradeOptions(noise_sigma=0.05), seed=3))
    assert not torch.equal(noisy, plain)
    blurred = degrade(hr, 2, DegradeOptions(blur_sigma=1.5))
    assert blurred.std() < plain.std()
    jpeg = degrade(hr, 2, DegradeOptions(jpeg_quality=10))
    assert 0 < (jpeg - plain).abs().mean() < 0.1
    with pytest.raises(ValueError, match="--degrade-jpeg"):
        DegradeOptions(jpeg_quality=100).check()


def test_eval_lr_consistency_and_spectral_angle():
    hr = natural_image(32)
    lr = degrade(hr, 2, DegradeOptions())
    exact = consistency_metrics(hr, lr, 2)
    assert exact["lr_consistency_l1"] <= 0.5 / 255 + 1e-7  # only the LR's 8-bit rounding is left
    assert exact["spectral_angle_deg"] < 0.5
    tinted = hr * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    shifted = consistency_metrics(tinted, lr, 2)
    assert shifted["spectral_angle_deg"] > 5 and shifted["lr_consistency_l1"] > 0.02
    brighter = consistency_metrics((hr * 0.7), lr, 2)  # darker, same colour: angle stays, L1 grows
    assert brighter["spectral_angle_deg"] < 0.5 and brighter["lr_consistency_l1"] > 0.05
