"""The stages' models for one run: loaded lazily, placed by a `Placement` (placement.py), known by their
declared parts (`rsvl_core.stages`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..kit.devices import torch_dtype
from ..memory.placement import PLACEMENTS, LocalPlacement, Placement, module_bytes, parts
from ..stages import CaptionStage, RefineStage, Stage1
from .acceleration import Acceleration, accelerate_stage

if TYPE_CHECKING:
    from ..memory.plan import MemoryPlan

STAGES = ("stage1", "caption", "refine")
__all__ = ["PLACEMENTS", "STAGES", "ModelFiles", "PipelineModels", "StageSpec", "module_bytes", "parts"]


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
    """The stages' models, loaded lazily; a placement decides where their weights live."""

    def __init__(self, device: torch.device, placement: str | Placement = "auto", stage1: StageSpec | None = None,
                 captioner: StageSpec | None = None, refiner: StageSpec | None = None,
                 acceleration: Acceleration | None = None) -> None:
        self.placement = LocalPlacement(device, placement) if isinstance(placement, str) else placement
        self.device = self.placement.device
        self.specs = {"stage1": stage1, "caption": captioner, "refine": refiner}
        self.loaded: dict[str, Stage1 | CaptionStage | RefineStage] = {}
        self.acceleration = acceleration or Acceleration()  # how models execute (all off by default)
        self.memory_plan: dict | None = None  # the --max-vram plan's record (memory_plan.MemoryPlan.record)
        # with a plan, models load on the host, are stored low-bit there, and only then come to the device:
        # loading a bf16 captioner straight onto a 12 GB card would fail before its fp8 storage is applied
        self.load_on_host = False

    @property
    def plan(self) -> str:
        return self.placement.plan

    @classmethod
    def from_files(cls, files: ModelFiles, device: torch.device, dtype: str = "fp32", placement: str = "auto",
                   vae_dtype: str | None = None, acceleration: Acceleration | None = None,
                   plan: MemoryPlan | None = None) -> PipelineModels:
        """Describe how to load each stage from its files (nothing is read until a stage is first used).

        `plan` (a `memory_plan.MemoryPlan`) overrides placement, refiner fp8 and the captioner's weight storage."""
        from ..caption import load_captioner
        from ..refine.refiner import load_refiner
        from ..stage1 import load_stage1

        storage = "none"
        if plan is not None:
            placement, acceleration, storage = plan.placement_for(device), plan.acceleration(acceleration), \
                plan.caption_storage
        weights = torch_dtype(dtype)
        stage1 = StageSpec("stage1", lambda dev: load_stage1(files.stage1, device=dev, dtype=weights), [files.stage1])
        captioner = refiner = None
        if files.captioner is not None:
            captioner = StageSpec("caption", lambda dev: load_captioner(files.captioner, files.adapter, device=dev,
                                                                        dtype=dtype, storage=storage),
                                  [files.captioner] + ([files.adapter] if files.adapter else []))
        if files.sdxl is not None and files.supir is not None:
            vae = torch_dtype(vae_dtype) if vae_dtype else None
            refiner = StageSpec("refine", lambda dev: load_refiner(files.sdxl, files.supir, dtype=weights,
                                                                   vae_dtype=vae, device=dev),
                                [files.sdxl, files.supir])
        models = cls(device, placement, stage1, captioner, refiner, acceleration)
        models.memory_plan = plan.record() if plan is not None else None
        models.load_on_host = plan is not None
        return models

    def files(self) -> dict[str, list[Path]]:
        return {name: spec.files for name, spec in self.specs.items() if spec is not None}

    def has(self, stage: str) -> bool:
        return self.specs.get(stage) is not None

    def load(self, stage: str):
        """The stage's model, loaded on first use (not placed)."""
        spec = self.specs.get(stage)
        if spec is None:
            raise ValueError(f"no model configured for stage {stage!r}")
        if stage not in self.loaded:
            self.loaded[stage] = spec.loader(torch.device("cpu") if self.load_on_host else self.device)
            accelerate_stage(stage, self.loaded[stage], self.acceleration)
        return self.loaded[stage]

    def get(self, stage: str, memory_required: int | Callable[[], int] = 0):
        """The stage's model, loaded if needed and placed where it runs."""
        model = self.load(stage)
        self.placement.acquire(stage, model, memory_required)
        return model

    def source(self, stage: str) -> StageHandle:
        """One stage of these models as a stage run takes it (`stage_runs.StageSource`)."""
        return StageHandle(self, stage)

    def preload(self) -> None:
        """Load every configured stage now (a wrong file fails before any image is processed)."""
        for stage, spec in self.specs.items():
            if spec is not None and stage not in self.loaded:
                self.get(stage)
                self.release(stage)

    def release(self, stage: str) -> None:
        """After a stage: the placement may move its model away (the sequential plan sends it to the CPU)."""
        if stage in self.loaded:
            self.placement.release(stage, self.loaded[stage])


@dataclass
class StageHandle:
    """A stage of `PipelineModels` as `stage_runs.StageSource`: load, place with the run's estimate, release."""

    models: PipelineModels
    stage: str

    def load(self):
        return self.models.load(self.stage)

    def place(self, need: Callable[[], int]):
        return self.models.get(self.stage, need)

    def release(self) -> None:
        self.models.release(self.stage)
