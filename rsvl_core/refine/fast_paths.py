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

from ..memory.lowbit import FP8, FP8_MAX, Fp8Conv2d, Fp8Linear
from ..memory.lowbit import store_fp8_weights as store_lowbit_fp8
from .nets.control import GLVControl
from .nets.unet import RefinerUNet

__all__ = ["FP8", "FP8_MAX", "FP8_RELATIVE_ERROR", "Fp8Conv2d", "Fp8Linear", "compile_refiner_networks",
           "is_compiled", "store_fp8_weights", "to_channels_last"]
UNET_ENTRY_POINTS = ("embed", "forward_encoder_partial", "resume_encoder", "forward_decoder")
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


def store_fp8_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16, keep: tuple[str, ...] = FP8_KEEP
                      ) -> int:
    """Replace, in place, every Linear and Conv2d of `module` (except the names in `keep`) by its fp8-storage
    twin computing in `dtype` (`rsvl_core.memory.lowbit`); the rest of the module moves to `dtype`. Returns how many
    layers were replaced."""
    return store_lowbit_fp8(module, dtype, keep)
