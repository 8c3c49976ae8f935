"""Weight-only low-bit storage for Linear and Conv2d layers: the weight is kept in fewer bytes and dequantised
to the compute dtype (bf16) at every call. What the low-memory mode uses for the refiner's UNet and control
net (fp8) and for the captioner's language model (fp8 or int4; int8 through torchao when it is installed).

- fp8: float8 e4m3 with one float32 scale per output channel (1 byte per weight, ~50 % of bf16).
- int4: signed 4-bit values in [-8, 7], two per byte, with one bf16 scale per group of `INT4_GROUP` input
  weights (~0.53 bytes per weight, ~27 % of bf16). No bitsandbytes, no custom kernel: plain torch ops, so it
  runs on any device (CPU included) and under fake tensors (the memory estimator).
- int8: torchao's weight-only int8 (`Int8WeightOnlyConfig`), only when torchao is installed. torchao's own
  int4 needs CUDA kernels (its `plain` layout needs the mslk package, `tile_packed_to_4d` CUDA), so int4 here
  is ours.

A kit module: it knows layers, not stages. Each stage decides which of its layers to store this way.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn
from torch.nn import functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
INT4_GROUP = 64  # input weights sharing one int4 scale
STORAGES = ("bf16", "fp8", "int8", "int4")  # weight storages a stage may ask for ("bf16" = as loaded)


class _LowBitWeight(nn.Module):
    """Common part of the low-bit layers: a stored weight, a bias in the compute dtype, a dequantising `weight`."""

    compute_dtype: torch.dtype

    def _keep_bias(self, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False) if bias is not None else None
        self.compute_dtype = dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight in the compute dtype (what the layer multiplies by)."""
        raise NotImplementedError


class _Fp8Weight(_LowBitWeight):
    """The weight in e4m3 with one float32 scale per output channel (bf16 compute, half the bytes of bf16)."""

    def _store(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        weight = weight.detach().float()
        amax = weight.abs().amax(dim=tuple(range(1, weight.ndim)), keepdim=True).clamp(min=1e-12)
        scale = amax / FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(FP8))
        self.register_buffer("weight_scale", scale)
        self._keep_bias(bias, dtype)

    @property
    def weight(self) -> torch.Tensor:
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


class Int4Linear(_LowBitWeight):
    """A Linear whose weight is stored as packed signed int4 with one bf16 scale per `INT4_GROUP` inputs.

    Symmetric per group: q = round(w / s) in [-8, 7] with s = max|w| / 7; two values per uint8 (low nibble first).
    """

    def __init__(self, layer: nn.Linear, dtype: torch.dtype, group: int = INT4_GROUP) -> None:
        super().__init__()
        out_features, in_features = layer.weight.shape
        if in_features % group or group % 2:
            raise ValueError(f"int4 storage needs in_features ({in_features}) to be a multiple of the group size "
                             f"({group}, itself even)")
        self.in_features, self.out_features, self.group = in_features, out_features, group
        grouped = layer.weight.detach().float().reshape(out_features, in_features // group, group)
        scale = (grouped.abs().amax(dim=-1, keepdim=True) / 7).clamp(min=1e-12)
        q = (grouped / scale).round().clamp(-8, 7).to(torch.int16).reshape(out_features, in_features) + 8
        self.register_buffer("weight_int4", (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8))
        self.register_buffer("weight_scale", scale.to(torch.bfloat16))
        self._keep_bias(layer.bias, dtype)

    @property
    def weight(self) -> torch.Tensor:
        packed = self.weight_int4
        low = (packed & 0xF).to(self.compute_dtype) - 8
        high = (packed >> 4).to(self.compute_dtype) - 8
        q = torch.stack([low, high], dim=-1).reshape(self.out_features, self.in_features // self.group, self.group)
        return (q * self.weight_scale.to(self.compute_dtype)).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.weight, self.bias)


def store_fp8_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16, keep: tuple[str, ...] = ()) -> int:
    """Replace, in place, every Linear and Conv2d of `module` (except the direct children named in `keep`) by
    its fp8-storage twin computing in `dtype`; the rest of the module moves to `dtype`. Returns how many layers
    were replaced."""
    to_dtype(module, dtype)
    return _replace_layers(module, keep, lambda child: Fp8Linear(child, dtype) if type(child) is nn.Linear
                           else Fp8Conv2d(child, dtype) if type(child) is nn.Conv2d else None)


def store_int4_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16, keep: tuple[str, ...] = (),
                       group: int = INT4_GROUP) -> int:
    """Replace, in place, every Linear of `module` whose width divides into groups by its int4 twin (the rest
    moves to `dtype`). Returns how many layers were replaced."""
    to_dtype(module, dtype)
    return _replace_layers(module, keep, lambda child: Int4Linear(child, dtype, group)
                           if type(child) is nn.Linear and child.in_features % group == 0 else None)


def torchao_available() -> bool:
    """Whether torchao (weight-only int8) is installed."""
    return importlib.util.find_spec("torchao") is not None


def store_int8_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """torchao's weight-only int8 for every Linear of `module` (in place; the rest moves to `dtype`).

    Raises RuntimeError naming the package when torchao is not installed."""
    if not torchao_available():
        raise RuntimeError("int8 weight storage needs the optional torchao package (pip install torchao)")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    to_dtype(module, dtype).requires_grad_(False)
    count = sum(1 for m in module.modules() if type(m) is nn.Linear)
    quantize_(module, Int8WeightOnlyConfig())
    return count


def to_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module.to(dtype)`, skipped when every floating weight already has it (fake-tensor models cannot always
    be converted in place: their parameters are swapped, which fails while anything else holds them)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if any(t.dtype != dtype for t in tensors):
        module.to(dtype)
    return module


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a wrapper subclass (torchao's quantized weights) counts its inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def _replace_layers(module: nn.Module, keep: tuple[str, ...], twin) -> int:
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in keep and parent is module:
                continue
            new = twin(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced
