"""Real-ESRGAN's Compact network (SRVGGNetCompact) built from its weights by rsvl itself, without spandrel.

The most used CPU upscale models (realesr-general-x4v3, realesr-animevideov3) are Compact: a plain stack of 3x3
convolutions with PReLU, a pixel shuffle, and the nearest-upsampled input added as the residual. Built here, a
process that runs one (the CLI, `rsvl batch` actors) does not import spandrel, whose registry imports torchvision
and with it torch's compiler (about a second of CPU at every start). The module is state-dict compatible with
spandrel's Compact (same keys, same arithmetic: equal outputs, tests/stage1/test_stage1_backend.py), and
`CompactDescriptor` carries the parts of spandrel's image-model descriptor that stage 1 uses.

Detection is strict (every key and shape of the layout, nothing else); a file it declines goes to spandrel's
registry as before, which knows more variants.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

COMPACT_ID, COMPACT_NAME = "Compact", "RealESRGAN Compact"  # spandrel's id and display name for the same network
_BODY_KEY = re.compile(r"body\.(\d+)\.(weight|bias)")


class SRVGGNetCompact(nn.Module):
    """Conv 3x3 + PReLU, `convs` times conv + PReLU, a last conv to `channels * scale²`, pixel shuffle, plus the
    input upsampled by nearest neighbour (the network learns the residual)."""

    def __init__(self, channels: int = 3, features: int = 64, convs: int = 16, scale: int = 4) -> None:
        super().__init__()
        self.upscale = scale
        self.num_in_ch = self.num_out_ch = channels
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, channels * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.upscale)
        out += F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return out


@dataclass(frozen=True)
class CompactLayout:
    """What a Compact state dict describes: input/output channels, features, body convolutions, scale."""

    channels: int
    features: int
    convs: int
    scale: int


def compact_layout(state: dict[str, Any]) -> CompactLayout | None:
    """The layout when `state` holds exactly a PReLU Compact network's tensors (any other key: None)."""
    matches = [_BODY_KEY.fullmatch(key) for key in state]
    if not matches or None in matches:
        return None
    last = max(int(match.group(1)) for match in matches)
    first, final = state.get("body.0.weight"), state.get(f"body.{last}.weight")
    if last < 2 or last % 2 or first is None or final is None or len(first.shape) != 4 \
            or tuple(first.shape[2:]) != (3, 3):
        return None
    # every key and shape is checked below, against the layout these figures describe
    features, channels = int(first.shape[0]), int(first.shape[1])
    scale = math.isqrt(int(final.shape[0]) // channels) if channels else 0
    layout = CompactLayout(channels, features, (last - 2) // 2, scale)
    if scale < 1 or _expected_shapes(layout) != {k: tuple(v.shape) for k, v in state.items()}:
        return None
    return layout


def _expected_shapes(layout: CompactLayout) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of the layout (spandrel's key names)."""
    f, c, s = layout.features, layout.channels, layout.scale
    convs = [(c, f)] + [(f, f)] * layout.convs + [(f, c * s * s)]
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (cin, cout) in enumerate(convs):
        shapes[f"body.{2 * index}.weight"] = (cout, cin, 3, 3)
        shapes[f"body.{2 * index}.bias"] = (cout,)
        if index < len(convs) - 1:
            shapes[f"body.{2 * index + 1}.weight"] = (f,)
    return shapes


def is_compact_state(state: dict[str, Any]) -> bool:
    """Whether `state` is a Compact network's state dict (`compact_layout` recognises it)."""
    return compact_layout(state) is not None


@dataclass(frozen=True)
class ArchitectureName:
    """An architecture's id and display name, as spandrel's descriptors carry them."""

    id: str
    name: str


@dataclass
class CompactDescriptor:
    """A loaded Compact network with what stage 1 reads from a spandrel image-model descriptor."""

    model: SRVGGNetCompact
    architecture: ArchitectureName = ArchitectureName(COMPACT_ID, COMPACT_NAME)
    supports_half: bool = True
    supports_bfloat16: bool = True
    size_requirements: None = None  # any height and width

    @property
    def scale(self) -> int:
        return int(self.model.upscale)

    @property
    def input_channels(self) -> int:
        return int(self.model.num_in_ch)

    @property
    def output_channels(self) -> int:
        return int(self.model.num_out_ch)

    @property
    def purpose(self) -> str:
        return "SR" if self.scale > 1 else "Restoration"

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CompactDescriptor:
        self.model.to(device=device, dtype=dtype)
        return self

    def eval(self) -> CompactDescriptor:
        self.model.eval()
        return self

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) in [0, 1] -> (B, C, h * scale, w * scale), clamped to [0, 1] (as spandrel's call)."""
        return self.model(image).clamp_(0.0, 1.0)


def load_compact(state: dict[str, torch.Tensor]) -> CompactDescriptor:
    """The Compact network of `state` (which `compact_layout` recognises), on the CPU in float32, eval mode."""
    layout = compact_layout(state)
    if layout is None:
        raise ValueError("not a Compact (SRVGGNetCompact) state dict")
    with torch.device("meta"):  # no random initialisation of weights that are replaced at once
        model = SRVGGNetCompact(layout.channels, layout.features, layout.convs, layout.scale)
    model.load_state_dict(state, strict=True, assign=True)
    return CompactDescriptor(model).eval()
