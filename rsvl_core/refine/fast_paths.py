"""Making the refiner's networks fast: torch.compile of the pieces the sampler calls, fp8 weight storage
(the low-memory mode), and channels-last memory. All three are off by default and leave results within the
tolerances stated in tests/speed/ (compile: float32 rounding; fp8: the bound in `FP8_RELATIVE_ERROR`).

The sampler never calls the UNet's `forward`: `ConditionedNetworks` calls `embed`, `forward_encoder_partial`,
`resume_encoder` (the step cache's split begin / finish) and `forward_decoder` (which runs the connectors),
and GLVControl as a module. Those five are what gets compiled, each as one graph (`fullgraph=True`: a graph
break is an error, not a silent slowdown).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .control import GLVControl
from .unet import RefinerUNet

UNET_ENTRY_POINTS = ("embed", "forward_encoder_partial", "resume_encoder", "forward_decoder")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
# Layers kept in the compute dtype: the first and last convs are tiny, and the code reads conv_in's dtype
# as "the network's dtype".
FP8_KEEP = ("conv_in", "conv_out")
# Measured on the tiny configs (tests/speed/test_fp8_weights.py): relative L2 of the UNet's epsilon with fp8
# weights against the same network with bf16 weights stays under this bound.
FP8_RELATIVE_ERROR = 0.08


def compile_refiner_networks(unet: RefinerUNet, control: GLVControl, **options) -> None:
    """Compile, in place, every UNet entry point the sampler calls and GLVControl (`options` go to torch.compile;
    default: fullgraph, static shapes)."""
    options = {"fullgraph": True, "dynamic": False, **options}
    for name in UNET_ENTRY_POINTS:
        setattr(unet, name, torch.compile(getattr(type(unet), name).__get__(unet), **options))
    control.compile(**options)


def is_compiled(unet: RefinerUNet) -> bool:
    """Whether `compile_refiner_networks` was applied to this UNet."""
    return all(name in vars(unet) for name in UNET_ENTRY_POINTS)


def to_channels_last(modules: Iterable[nn.Module]) -> None:
    """Store every 4-D weight channels-last (NHWC): the layout cuDNN's convolutions run fastest in on tensor cores."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


class _Fp8Weight(nn.Module):
    """Common part of the fp8 layers: the weight in e4m3 with one float32 scale per output channel, dequantised
    to the compute dtype at every call (bf16 compute, half the weight memory of bf16)."""

    def _store(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        weight = weight.detach().float()
        amax = weight.abs().amax(dim=tuple(range(1, weight.ndim)), keepdim=True).clamp(min=1e-12)
        scale = amax / FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(FP8))
        self.register_buffer("weight_scale", scale)
        self.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False) if bias is not None else None
        self.compute_dtype = dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight in the compute dtype (what the layer multiplies by)."""
        return self.weight_fp8.to(self.compute_dtype) * self.weight_scale.to(self.compute_dtype)


class Fp8Linear(_Fp8Weight):
    def __init__(self, layer: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._store(layer.weight, layer.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.weight, self.bias)


class Fp8Conv2d(_Fp8Weight):
    def __init__(self, layer: nn.Conv2d, dtype: torch.dtype) -> None:
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(f"fp8 storage supports zero-padded convolutions, got padding_mode={layer.padding_mode}")
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        self._store(layer.weight, layer.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.to(self.compute_dtype), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def store_fp8_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16, keep: tuple[str, ...] = FP8_KEEP
                      ) -> int:
    """Replace, in place, every Linear and Conv2d of `module` (except the names in `keep`) by its fp8-storage
    twin computing in `dtype`; the rest of the module moves to `dtype`. Returns how many layers were replaced."""
    module.to(dtype)
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in keep and parent is module:
                continue
            if type(child) is nn.Linear:
                setattr(parent, name, Fp8Linear(child, dtype))
            elif type(child) is nn.Conv2d:
                setattr(parent, name, Fp8Conv2d(child, dtype))
            else:
                continue
            replaced += 1
    return replaced
