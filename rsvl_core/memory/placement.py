"""Where a stage's weights live while it runs: the one interface that moves modules.

Stages never move themselves; whoever runs a stage asks a `Placement` to `acquire` it (its declared modules
on the device it runs on) before the call and to `release` it after. Two implementations:

- `LocalPlacement` (this module, the CLI, `rsvl batch`, `rsvl eval`): one device, a plan of
  `resident` (every model stays on the device once loaded), `sequential` (a model is on the device only while
  its stage runs, then back on the CPU: the seed needs two GPUs, this fits one) or `auto` (resident while the
  models fit in free memory with headroom, else sequential; always resident on a CPU).
- the ComfyUI node pack's host placement (`rsvl_core/hosted/handles.py`): ModelPatcher + `load_models_gpu`, so ComfyUI's
  memory manager owns every weight.

A stage's parts are what its `modules()` declares (`rsvl_core.stages`); nothing is found by probing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from .lowbit import tensor_bytes

PLACEMENTS = ("auto", "resident", "sequential")
HEADROOM = 1.25  # activations and the VAE need room beside the weights


class Placement(Protocol):
    """Puts a stage's declared modules where it runs, and takes them away again; nobody else moves a module."""

    device: torch.device

    def acquire(self, stage: str, model: Any, memory_required: int | Callable[[], int] = 0) -> None:
        """Before `stage` runs: its modules on `device`, with room for its activations: `memory_required` bytes,
        or a callable giving them (an estimate, computed only by a placement that uses it)."""

    def release(self, stage: str, model: Any) -> None:
        """After `stage` ran: the placement may move its modules away."""

    @property
    def plan(self) -> str:
        """What the run record says about where models lived (e.g. "resident")."""


def parts(model: Any) -> list[torch.nn.Module]:
    """A stage's declared modules (a bare nn.Module counts as one part, for tests and simple models)."""
    if isinstance(model, torch.nn.Module):
        return [model]
    return list(model.modules().values())


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of `modules` (what placing them on a device costs)."""
    total = 0
    for module in modules:  # quantized weights (torchao's int8) counted as stored, not as their wrapper's dtype
        total += sum(tensor_bytes(t) for t in (*module.parameters(), *module.buffers()))
    return total


def move(model: Any, device: torch.device) -> None:
    """Move a stage's declared modules to `device`."""
    for module in parts(model):
        module.to(device)


class LocalPlacement:
    """One device and a plan: resident, sequential or auto (settled as models arrive; see the module doc)."""

    def __init__(self, device: torch.device | str, requested: str = "auto") -> None:
        if requested not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
        self.device, self.requested = torch.device(device), requested
        # on a CPU every plan is "resident"; on CUDA "auto" is settled as models load
        self.current = "resident" if self.device.type != "cuda" else requested
        self.placed: dict[str, Any] = {}  # every model this placement has put anywhere, by stage

    @property
    def plan(self) -> str:
        return self.current

    def acquire(self, stage: str, model: Any, memory_required: int | Callable[[], int] = 0) -> None:
        first = stage not in self.placed
        self.placed[stage] = model
        move(model, self.device)
        if first and self.requested == "auto" and self.device.type == "cuda":
            self.decide(stage)

    def release(self, stage: str, model: Any) -> None:
        if self.current == "sequential":
            move(model, torch.device("cpu"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def decide(self, stage: str) -> None:
        """auto: stay resident while every placed model fits with headroom; otherwise go sequential."""
        free, _ = torch.cuda.mem_get_info(self.device)
        on_device = sum(module_bytes(*parts(m)) for m in self.placed.values())  # all placed models are there now
        if self.current in ("auto", "resident"):
            self.current = "resident" if on_device * HEADROOM < free + on_device else "sequential"
        if self.current == "sequential":
            for name, model in self.placed.items():
                if name != stage:
                    move(model, torch.device("cpu"))
            torch.cuda.empty_cache()
