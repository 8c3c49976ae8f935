"""Model handles: a model chosen by a host's loader node, loaded on first use, placed by the host's memory manager
(`HostPlacement`, the engine's `Placement` over it), and offered to the stage runs as a `StageSource`."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..kit.devices import auto_dtype, release_freed_host_memory, torch_dtype
from ..kit.errors import RsvlError
from ..memory.plan import plan_memory
from ..pipeline import Acceleration, RunConfig
from ..pipeline.acceleration import accelerate_stage
from ..pipeline.components import SpandrelStage1, load_captioner, load_refiner, load_stage1

log = logging.getLogger("rsvl")


class NodeError(RsvlError):
    """A user-fixable problem, shown by the host as one line (no engine traceback chained to it)."""


class Host(Protocol):
    def torch_device(self, choice: str) -> torch.device: ...
    def offload_device(self, choice: str) -> torch.device: ...
    def register(self, module: torch.nn.Module, load_device: torch.device, offload_device: torch.device) -> Any: ...
    def load(self, patchers: list, memory_required: int = 0) -> None: ...
    def progress_bar(self, total: int) -> Any: ...
    def check_interrupt(self) -> None: ...
    def intermediate_device(self) -> torch.device: ...
    preview_size: int
    previews: bool  # step previews wanted (ComfyUI's preview method is not "none")


def resolve_dtype(choice: str, device: torch.device) -> str:
    """'auto' -> bf16 on a bf16-capable CUDA device, fp16 on other accelerators, fp32 on the CPU."""
    return auto_dtype(device) if choice == "auto" else choice


class ModuleBundle(torch.nn.Module):
    """One nn.Module over a model's declared parts, so the host's memory manager moves them as one."""

    def __init__(self, **parts: torch.nn.Module) -> None:
        super().__init__()
        for name, part in parts.items():
            self.add_module(name, part)


class HostPlacement:
    """rsvl_core's `Placement`, backed by the host's memory manager (ComfyUI: ModelPatcher + load_models_gpu).

    Each stage's declared modules become one registered patcher the first time the stage is acquired; every
    acquire asks the host to load it (with room for the stage's activations), and the host alone decides when
    to offload. A stage that declares no movable modules (an 8/4-bit captioner) stays where it was loaded."""

    plan = "host memory manager"

    def __init__(self, host: Host, choice: str) -> None:
        self.host = host
        self.device = host.torch_device(choice)
        self.offload_device = host.offload_device(choice)
        self.patchers: dict[str, Any] = {}

    def acquire(self, stage: str, model: Any, memory_required: int | Callable[[], int] = 0) -> None:
        if stage not in self.patchers:
            modules = model.modules()
            self.patchers[stage] = self.host.register(ModuleBundle(**modules), self.device, self.offload_device) \
                if modules else None
        if self.patchers[stage] is not None:
            self.host.load([self.patchers[stage]], memory_required() if callable(memory_required) else memory_required)

    def release(self, stage: str, model: Any) -> None:
        """Nothing: ComfyUI's memory manager offloads when it needs the room."""


@dataclass(eq=False)
class ModelHandle:
    """A model chosen in LoadRSVLModels. `get(host)` loads it once (lazily) and has the host place it."""

    kind: str                           # "stage-1", "captioner", "refiner"
    sources: dict[str, str | None]      # file / folder paths; empty = nothing chosen
    dtype: str = "auto"
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    loader: Callable[[ModelHandle, torch.device, str], Any] | None = None
    model: Any = None
    placement: HostPlacement | None = None
    load_count: int = 0
    shared: dict[str, Any] = field(default_factory=dict)  # over core's SDXL: "supir" parts, "text" encoders

    @property
    def chosen(self) -> bool:
        return bool(self.sources)

    @property
    def patcher(self) -> Any:
        """The host's handle of this model's weights (None before the first use, or when not movable)."""
        return None if self.placement is None else self.placement.patchers.get(self.kind)

    def describe(self) -> str:
        return f"{self.kind}: " + (", ".join(os.path.basename(str(p)) for p in self.sources.values() if p) or "none")

    def load_on(self, host: Host) -> Any:
        """The loaded model (loaded on first use, on the host's offload device; not placed)."""
        if not self.chosen:
            raise NodeError(f"no {self.kind} model chosen: pick one in LoadRSVLModels")
        if self.placement is None:
            self.placement = HostPlacement(host, self.device)
        if self.model is None:
            dtype = resolve_dtype(self.dtype, self.placement.device)
            log.info("rsvl: loading %s (%s)", self.describe(), dtype)
            self.model = self.loader(self, self.placement.offload_device, dtype)
            self.load_count += 1
            release_freed_host_memory()  # the load's temporaries, back to the OS
        return self.model

    def get(self, host: Host, memory_required: int | Callable[[], int] = 0) -> Any:
        """The loaded model, placed by the host (the host may have offloaded it since the last run)."""
        model = self.load_on(host)
        self.placement.acquire(self.kind, model, memory_required)
        return model

    def source(self, host: Host) -> HandleSource:
        """This handle as a stage run takes its model (`pipeline.stage_runs.StageSource`)."""
        return HandleSource(lambda: self.load_on(host), lambda need: self.get(host, need))


@dataclass
class HandleSource:
    """A `StageSource` from two calls: load (not placed), and place with the run's estimate. Release is the host's
    (its memory manager offloads when it needs the room)."""

    load: Callable[[], Any]
    place: Callable[[Callable[[], int]], Any]

    def release(self) -> None:
        """Nothing: the host's memory manager offloads when it needs the room."""


# Core's UPSCALE_MODEL objects we have placed: one placement (one registered patcher) per loaded model, dropped
# with it when ComfyUI lets the loader's output go.
_UPSCALE_PLACEMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def upscale_model_source(host: Host, upscale_model: Any) -> HandleSource:
    """Core's UPSCALE_MODEL ("Load Upscale Model") as our stage 1, placed by the host's memory manager with room for
    the run (the stage run's estimate).

    ComfyUI 0.8 passes the spandrel descriptor itself; builds that wrap it in a ModelPatcher pass the patcher
    (its `.model` is the descriptor), which is then loaded as it is. Anything else is refused in one line."""
    import spandrel

    patcher = None
    descriptor = upscale_model
    if not isinstance(descriptor, spandrel.ModelBase) and \
            isinstance(getattr(upscale_model, "model", None), spandrel.ModelBase):
        patcher, descriptor = upscale_model, upscale_model.model
    if not isinstance(descriptor, spandrel.ModelBase):
        raise NodeError(f"upscale_model: expected the UPSCALE_MODEL of core's Load Upscale Model, got "
                        f"{type(upscale_model).__name__}")
    stage = SpandrelStage1.from_descriptor(descriptor, f"UPSCALE_MODEL ({descriptor.architecture.name})")

    def place(need: Callable[[], int]) -> SpandrelStage1:
        if patcher is not None:
            host.load([patcher], need())
            return stage
        placement = _UPSCALE_PLACEMENTS.get(descriptor)
        if placement is None:
            placement = _UPSCALE_PLACEMENTS[descriptor] = HostPlacement(host, "auto")
        placement.acquire("stage-1", stage, need)
        return stage

    return HandleSource(lambda: stage, place)


def load_stage1_model(handle: ModelHandle, device: torch.device, dtype: str):
    """SR3 or any spandrel SR model (told apart by the file's keys)."""
    return load_stage1(handle.sources["stage1"], device=device, dtype=torch_dtype(dtype))


def load_captioner_model(handle: ModelHandle, device: torch.device, dtype: str):
    quantization = handle.options.get("quantization", "none")
    if quantization != "none":  # bitsandbytes weights cannot be moved: load them where they run, unmanaged
        device = handle.options["load_device"]
    return load_captioner(handle.sources["llava"], handle.sources.get("adapter"), device=device, dtype=dtype,
                          quantization=quantization, merge_adapter=handle.options.get("merge_adapter", False),
                          storage=handle.options.get("storage", "none"))


def load_refiner_model(handle: ModelHandle, device: torch.device, dtype: str):
    refiner = load_refiner(handle.sources["sdxl"], handle.sources["supir"], dtype=torch_dtype(dtype), device=device)
    if handle.options.get("fp8"):  # the memory plan's refiner storage
        accelerate_stage("refine", refiner, Acceleration(fp8=True))
    return refiner


def node_memory_plan(max_vram: str, dtype: str) -> dict[str, Any]:
    """LoadRSVLModels' `max_vram`: the plan's weight storage for the handles and its line for the reports.

    In ComfyUI the memory manager places every weight, so only the plan's storage applies (no block swap);
    the plan is made for the paper's input (28 px -> 224 px by SR3, refined at 1024)."""
    if not max_vram:
        return {}
    config = RunConfig.from_values(max_vram=max_vram, dtype="bf16" if dtype == "auto" else dtype)
    plan = plan_memory(config)
    line = f"{plan.describe()} (ComfyUI's memory manager places the weights; the plan sets their storage)"
    log.info("rsvl %s", line)
    return {"storage": plan.caption_storage, "fp8": plan.rung.storage.refine == "fp8", "memory_plan": line}

