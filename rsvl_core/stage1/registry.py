"""Where a stage-1 architecture is added: SR3 registered beside spandrel's architectures in a copy of its registry.

`load_architecture(state, path)` is the one load for any stage-1 file. It first refuses files of other model
families (SDXL, SUPIR, VAE, LLaVA, LoRA: the one rule in `rsvl_core.weights.families`), then lets the registry
detect the
architecture by the keys and build it: SR3 first (its `denoise_fn.*` / UNet keys are unambiguous), then every
architecture spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, SPAN, ...), in spandrel's own order.
To add a stage-1 architecture: a `spandrel.Architecture` (id, `detect`, `load`) added in `stage1_registry`.
spandrel's `MAIN_REGISTRY` (what ComfyUI loads its upscale models with) is copied, never modified.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import spandrel
import torch

from ..kit.errors import CheckpointError
from ..weights.checkpoint import reading_headers
from ..weights.families import refuse_family
from .loader import SR3Model, is_sr3_state, load_sr3
from .model import SR3UNet

SR3_ID = "SR3"
EXPECTED_STAGE1 = ("a stage-1 checkpoint: an SR3 generator (*_gen.pth) or a single-image super-resolution model "
                   "spandrel recognises (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, SPAN, ...)")
STAGE1_ROLE = "a stage-1 model"


class SR3Architecture(spandrel.Architecture[SR3UNet]):
    """SR3 as a registry entry: detected by its UNet keys, built by `load_sr3` (state-dict compatible with the
    released `*_gen.pth`). `load` returns an `SR3Model` rather than a spandrel descriptor: SR3 is a sampler with a
    noise schedule, not one forward pass. `path` is the file, for a config JSON beside it."""

    def __init__(self, path: Path) -> None:
        super().__init__(id=SR3_ID, name="SR3", detect=is_sr3_state)
        self.path = Path(path)

    def load(self, state_dict: spandrel.StateDict) -> SR3Model:  # type: ignore[override]
        """The SR3 model on the CPU in float32 (the caller places it)."""
        return load_sr3(self.path, state=state_dict)


def stage1_registry(path: Path) -> spandrel.ArchRegistry:
    """A copy of spandrel's main registry with SR3 added, detected before every spandrel architecture, for the
    file at `path` (SR3 reads a config JSON beside it)."""
    registry = spandrel.MAIN_REGISTRY.copy()
    spandrel_ids = tuple(support.architecture.id for support in spandrel.MAIN_REGISTRY.architectures())
    registry.add(spandrel.ArchSupport.from_architecture(SR3Architecture(path), before=spandrel_ids))
    return registry


def load_architecture(state: spandrel.StateDict, path: Path) -> SR3Model | spandrel.ModelDescriptor:
    """The one load of a stage-1 file's tensors: other model families refused, then the registry's detection and
    build; every failure is a one-line CheckpointError naming the file and what it expected."""
    path = Path(path)
    refuse_family(state, path, STAGE1_ROLE, EXPECTED_STAGE1)
    try:
        with torch.device("meta") if reading_headers() else nullcontext():  # a check: build without memory
            return stage1_registry(path).load(state)
    except CheckpointError:
        raise
    except spandrel.UnsupportedModelError:
        keys = ", ".join(sorted(state)[:4])
        raise CheckpointError(
            path, f"not SR3, and spandrel {spandrel.__version__} recognises no architecture in it ({len(state)} "
            f"tensors; first keys: {keys})", EXPECTED_STAGE1,
        ) from None
    except (KeyError, RuntimeError, ValueError, AssertionError, IndexError, TypeError, AttributeError) as exc:
        # detection matched but the tensors do not build that architecture: strict load_state_dict
        # reports missing/unexpected keys and shape mismatches over several lines; keep them on one.
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise CheckpointError(path, f"spandrel could not build a model from it: {detail}", EXPECTED_STAGE1) from None
