"""How the stages' models execute on one device (not what they compute): compile, CUDA graphs, static KV cache,
fp8 weights, channels-last. All off by default; `PipelineModels` applies them as each stage loads.

Each switch keeps results within the tolerance its test states (tests/speed/): compile and channels-last
within float32 rounding, the static SR3 loop and the static KV cache exactly, fp8 weights within
`refine.fast_paths.FP8_RELATIVE_ERROR` of bf16 weights (the low-memory mode, bf16 compute).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..refine.fast_paths import compile_refiner_networks, store_fp8_weights, to_channels_last

SWITCHES = ("compile", "cuda_graphs", "static_cache", "fp8", "channels_last")


@dataclass(frozen=True)
class Acceleration:
    """Execution switches for the stages' models.

    Args:
        compile: torch.compile the refiner's networks (UNet entry points, GLVControl, connectors) and SR3's UNet.
        cuda_graphs: SR3's faithful loop on static buffers, replayed as a CUDA graph on CUDA.
        static_cache: the captioner decodes with a static KV cache (compiled decode step on CUDA).
        fp8: the refiner's UNet and control net store weights in fp8 e4m3 and compute in bf16 (low memory).
        channels_last: convolution weights (refiner, VAE, SR3) in NHWC memory.
        compile_mode / compile_backend: passed to torch.compile (None: its defaults, inductor).
    """

    compile: bool = False
    cuda_graphs: bool = False
    static_cache: bool = False
    fp8: bool = False
    channels_last: bool = False
    compile_mode: str | None = None
    compile_backend: str | None = None

    @classmethod
    def all_on(cls, **overrides) -> Acceleration:
        return cls(**{**{name: True for name in SWITCHES}, **overrides})

    @classmethod
    def from_names(cls, names: str) -> Acceleration:
        """From a comma-separated list of switch names ("" = none; dashes or underscores): what --accelerate takes."""
        chosen = [n.strip().replace("-", "_") for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in SWITCHES]
        if unknown:
            raise ValueError(f"unknown acceleration {', '.join(unknown)}; choose from {', '.join(SWITCHES)}")
        return cls(**{n: True for n in chosen})

    def enabled(self) -> list[str]:
        """The switches that are on, by name (for run records and benchmark tables)."""
        return [f.name for f in fields(self) if f.name in SWITCHES and getattr(self, f.name)]

    def compile_options(self) -> dict:
        options = {}
        if self.compile_mode is not None:
            options["mode"] = self.compile_mode
        if self.compile_backend is not None:
            options["backend"] = self.compile_backend
        return options


def accelerate_stage(stage: str, model, acceleration: Acceleration) -> None:
    """Apply `acceleration` in place to one loaded stage model ("stage1", "caption" or "refine")."""
    if stage == "stage1":
        _stage1(model, acceleration)
    elif stage == "caption":
        if hasattr(model, "static_cache"):
            model.static_cache = acceleration.static_cache
    elif stage == "refine":
        _refine(model, acceleration)


def _stage1(model, acceleration: Acceleration) -> None:
    if getattr(model, "kind", None) != "sr3":
        return  # a spandrel model: one forward per tile, nothing here applies
    model.static_loop = acceleration.cuda_graphs
    unet = model.model.unet
    if acceleration.channels_last:
        to_channels_last([unet])
    if acceleration.compile:
        unet.compile(fullgraph=True, dynamic=False, **acceleration.compile_options())


def _refine(refiner, acceleration: Acceleration) -> None:
    if acceleration.fp8:
        dtype = torch.bfloat16
        store_fp8_weights(refiner.unet, dtype)
        store_fp8_weights(refiner.control, dtype)
    if acceleration.channels_last:
        to_channels_last([refiner.unet, refiner.control, refiner.vae])
    if acceleration.compile:
        compile_refiner_networks(refiner.unet, refiner.control, **acceleration.compile_options())
