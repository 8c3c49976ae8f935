"""The stages' models on one device: loaded lazily, placed by a plan, each known by its declared parts.

- `resident`:   every model stays on the device once loaded (fastest when memory allows);
- `sequential`: a model is on the device only while its stage runs, then goes back to the CPU
                (the seed needs two GPUs; this fits one);
- `auto`:       resident while the models fit in the device's free memory with headroom, else
                sequential (always resident on the CPU).

A stage's parts are what its `modules()` declares (`rsvl_core.stages`); nothing is found by probing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..devices import torch_dtype
from ..stages import CaptionStage, RefineStage, Stage1
from .acceleration import Acceleration, accelerate_stage

PLACEMENTS = ("auto", "resident", "sequential")
HEADROOM = 1.25  # activations and the VAE need room beside the weights
STAGES = ("stage1", "caption", "refine")


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of `modules` (what placing them on a device costs)."""
    total = 0
    for module in modules:
        total += sum(t.numel() * t.element_size() for t in module.parameters())
        total += sum(t.numel() * t.element_size() for t in module.buffers())
    return total


@dataclass
class StageSpec:
    """How to load one stage's model: `loader(device)` returns it on that device."""

    name: str
    loader: Callable[[torch.device], Stage1 | CaptionStage | RefineStage]
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class ModelFiles:
    """The files one run needs (located before any heavy work): stage 1, and the other two stages when used."""

    stage1: Path
    captioner: Path | None = None
    adapter: Path | None = None
    sdxl: Path | None = None
    supir: Path | None = None


class PipelineModels:
    """The stages' models, loaded lazily and placed on one device by a plan."""

    def __init__(self, device: torch.device, placement: str = "auto", stage1: StageSpec | None = None,
                 captioner: StageSpec | None = None, refiner: StageSpec | None = None,
                 acceleration: Acceleration | None = None) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        self.device, self.requested = torch.device(device), placement
        self.specs = {"stage1": stage1, "caption": captioner, "refine": refiner}
        self.loaded: dict[str, Stage1 | CaptionStage | RefineStage] = {}
        self.acceleration = acceleration or Acceleration()  # how models execute (all off by default)
        # on a CPU every plan is "resident"; on CUDA "auto" is settled as models load
        self.plan = "resident" if self.device.type != "cuda" else placement

    @classmethod
    def from_files(cls, files: ModelFiles, device: torch.device, dtype: str = "fp32", placement: str = "auto",
                   vae_dtype: str | None = None, acceleration: Acceleration | None = None) -> PipelineModels:
        """Describe how to load each stage from its files (nothing is read until a stage is first used)."""
        from ..caption import load_captioner
        from ..refine.refiner import load_refiner
        from ..stage1 import load_stage1

        weights = torch_dtype(dtype)
        stage1 = StageSpec("stage1", lambda dev: load_stage1(files.stage1, device=dev, dtype=weights), [files.stage1])
        captioner = refiner = None
        if files.captioner is not None:
            captioner = StageSpec("caption", lambda dev: load_captioner(files.captioner, files.adapter, device=dev,
                                                                        dtype=dtype),
                                  [files.captioner] + ([files.adapter] if files.adapter else []))
        if files.sdxl is not None and files.supir is not None:
            vae = torch_dtype(vae_dtype) if vae_dtype else None
            refiner = StageSpec("refine", lambda dev: load_refiner(files.sdxl, files.supir, dtype=weights,
                                                                   vae_dtype=vae, device=dev),
                                [files.sdxl, files.supir])
        return cls(device, placement, stage1, captioner, refiner, acceleration)

    def files(self) -> dict[str, list[Path]]:
        return {name: spec.files for name, spec in self.specs.items() if spec is not None}

    def has(self, stage: str) -> bool:
        return self.specs.get(stage) is not None

    def get(self, stage: str):
        """The stage's model, loaded if needed and on the device."""
        spec = self.specs.get(stage)
        if spec is None:
            raise ValueError(f"no model configured for stage {stage!r}")
        if stage not in self.loaded:
            self.loaded[stage] = spec.loader(self.device)
            accelerate_stage(stage, self.loaded[stage], self.acceleration)
            if self.requested == "auto" and self.device.type == "cuda":
                self._decide(stage)
        model = self.loaded[stage]
        self._to(model, self.device)
        return model

    def preload(self) -> None:
        """Load every configured stage now (a wrong file fails before any image is processed)."""
        for stage, spec in self.specs.items():
            if spec is not None and stage not in self.loaded:
                self.get(stage)
                self.release(stage)

    def release(self, stage: str) -> None:
        """After a stage: in the sequential plan, its model goes back to the CPU."""
        if self.plan == "sequential" and stage in self.loaded:
            self._to(self.loaded[stage], torch.device("cpu"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _decide(self, current: str) -> None:
        """auto: stay resident while every loaded model fits with headroom; otherwise go sequential."""
        free, _ = torch.cuda.mem_get_info(self.device)
        on_device = sum(self._bytes(m) for m in self.loaded.values())  # all loaded models are on the device now
        if self.plan in ("auto", "resident"):
            self.plan = "resident" if on_device * HEADROOM < free + on_device else "sequential"
        if self.plan == "sequential":
            for name, model in self.loaded.items():
                if name != current:
                    self._to(model, torch.device("cpu"))
            torch.cuda.empty_cache()

    @staticmethod
    def _bytes(model) -> int:
        return module_bytes(*parts(model))

    @staticmethod
    def _to(model, device: torch.device) -> None:
        for module in parts(model):
            module.to(device)


def parts(model) -> list[torch.nn.Module]:
    """A stage's declared modules (a bare nn.Module counts as one part, for tests and simple models)."""
    if isinstance(model, torch.nn.Module):
        return [model]
    return list(model.modules().values())
