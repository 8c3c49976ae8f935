"""A Real-ESRGAN Compact network (SRVGGNetCompact) written as an ncnn graph: param text and float32 weights.

ncnn runs a 3x3 convolution with Winograd kernels, which on the CPU is what makes it faster than a direct
convolution for the same weights. The graph is the module's own forward, layer for layer: convolutions with
their activation, the pixel shuffle, the nearest upsample of the input and the residual add. Weights are stored
as float32 (tag 0), so the only difference from torch is the order of floating-point operations.
"""

from __future__ import annotations

import struct

import numpy as np
from torch import nn

NCNN_MAGIC = 7767517  # first line of every ncnn param file
INPUT, OUTPUT = "data", "output"


def is_compact(module: nn.Module) -> bool:
    """Whether `module` is spandrel's SRVGGNetCompact with an activation ncnn has (PReLU, ReLU, LeakyReLU)."""
    if type(module).__name__ != "SRVGGNetCompact" or not isinstance(getattr(module, "body", None), nn.ModuleList):
        return False
    return all(isinstance(layer, (nn.Conv2d, nn.PReLU, nn.ReLU, nn.LeakyReLU)) for layer in module.body)


def compact_to_ncnn(module: nn.Module) -> tuple[str, bytes]:
    """(param text, model bytes) of an SRVGGNetCompact: input blob "data" (3, h, w), output "output"."""
    if not is_compact(module):
        raise ValueError(f"not a Compact (SRVGGNetCompact) network: {type(module).__name__}")
    layers: list[str] = []
    weights = bytearray()
    blob = "x"
    layers.append(f"Input {INPUT} 0 1 {INPUT}")
    layers.append(f"Split split_in 1 2 {INPUT} {blob} skip")
    for index, layer in enumerate(module.body):
        out = f"b{index}"
        if isinstance(layer, nn.Conv2d):
            _check_conv(layer)
            weight = layer.weight.detach().float().cpu().numpy()
            bias = layer.bias.detach().float().cpu().numpy()
            layers.append(f"Convolution conv{index} 1 1 {blob} {out} 0={weight.shape[0]} 1=3 3=1 4=1 5=1 "
                          f"6={weight.size}")
            weights += struct.pack("<I", 0) + np.ascontiguousarray(weight, "<f4").tobytes()
            weights += np.ascontiguousarray(bias, "<f4").tobytes()
        elif isinstance(layer, nn.PReLU):
            slope = layer.weight.detach().float().cpu().numpy()
            layers.append(f"PReLU act{index} 1 1 {blob} {out} 0={slope.size}")
            weights += np.ascontiguousarray(slope, "<f4").tobytes()
        else:
            slope = layer.negative_slope if isinstance(layer, nn.LeakyReLU) else 0.0
            layers.append(f"ReLU act{index} 1 1 {blob} {out} 0={slope:.9e}")
        blob = out
    scale = int(module.upscale)
    layers.append(f"PixelShuffle shuffle 1 1 {blob} shuffled 0={scale}")
    layers.append(f"Interp base 1 1 skip based 0=1 1={float(scale):.6e} 2={float(scale):.6e}")
    layers.append(f"BinaryOp add 2 1 shuffled based {OUTPUT} 0=0")
    param = "\n".join([str(NCNN_MAGIC), f"{len(layers)} {_count_blobs(layers)}", *layers]) + "\n"
    return param, bytes(weights)


def _count_blobs(layers: list[str]) -> int:
    """Blobs in the graph: every layer output (`Type name n_in n_out inputs... outputs... params...`)."""
    count = 0
    for line in layers:
        fields = line.split()
        count += int(fields[3])
    return count


def _check_conv(conv: nn.Conv2d) -> None:
    """Refuse a convolution the graph does not describe (Compact's are all 3x3, stride 1, padding 1, biased)."""
    if (conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.bias is None
            or conv.groups != 1 or conv.dilation != (1, 1)):
        raise ValueError(f"unexpected convolution in a Compact network: {conv}")

