"""fp8 (e4m3) weight storage with bf16 compute for the refiner's UNet and GLVControl: memory and error bound."""

from __future__ import annotations

import torch

from rsvl_core.pipeline.models import module_bytes
from rsvl_core.refine.fast_paths import FP8, FP8_RELATIVE_ERROR, Fp8Conv2d, Fp8Linear, store_fp8_weights
from rsvl_core.refine.nets.control import GLVControl
from rsvl_core.refine.nets.unet import RefinerUNet
from rsvl_core.refine.tiny import tiny_refiner_config


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _eps(unet, control, config, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([300, 300])
    context = torch.randn(2, 77, config.context_dim, generator=g) * 0.5
    vector = torch.randn(2, config.adm_in_channels, generator=g) * 0.5
    with torch.inference_mode():
        features = control(x * 0.5, x, t, context, vector)
        return unet(x, t, context, vector, features)


def test_fp8_weights_halve_memory_and_stay_within_the_stated_bound():
    config = tiny_refiner_config()
    torch.manual_seed(0)
    unet, control = RefinerUNet(config).eval(), GLVControl(config).eval()
    reference = _eps(unet, control, config, 1)  # float32
    unet.to(torch.bfloat16), control.to(torch.bfloat16)
    bf16_bytes = module_bytes(unet, control)
    bf16 = [_eps(unet, control, config, seed) for seed in (1, 2)]
    replaced = store_fp8_weights(unet) + store_fp8_weights(control)
    fp8_bytes = module_bytes(unet, control)
    fp8 = [_eps(unet, control, config, seed) for seed in (1, 2)]

    layers = [m for m in (*unet.modules(), *control.modules()) if isinstance(m, Fp8Linear | Fp8Conv2d)]
    assert replaced == len(layers) > 100
    assert all(m.weight_fp8.dtype == FP8 and m.weight.dtype == torch.bfloat16 for m in layers)
    assert unet.conv_in.weight.dtype == torch.bfloat16  # kept: the network's dtype is read from it
    assert not any(type(m) in (torch.nn.Linear, torch.nn.Conv2d) for m in unet.modules() if m is not unet.conv_in
                   and m is not unet.conv_out)
    assert fp8_bytes < 0.62 * bf16_bytes  # weights 1 byte instead of 2; scales, norms and biases stay bf16/fp32
    for got, want in zip(fp8, bf16, strict=True):
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        error = _relative(got, want)
        assert 0 < error < FP8_RELATIVE_ERROR, error
    assert _relative(bf16[0], reference) < 0.02  # bf16 itself, for scale: fp8 is the larger of the two errors


def test_fp8_layer_roundtrip_error_is_that_of_three_mantissa_bits():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    fp8 = Fp8Conv2d(conv, torch.float32)
    relative = (fp8.weight - conv.weight.detach()).abs() / conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    assert float(relative.max()) <= 2**-4  # half an e4m3 step at the top of the range, relative to the row's max
    x = torch.randn(2, 16, 8, 8)
    assert _relative(fp8(x), conv(x)) < 0.05
