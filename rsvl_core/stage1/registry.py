"""Where a stage-1 architecture is added: rsvl's own architectures first, then every one spandrel knows.

`load_architecture(state, path)` is the one load for any stage-1 file. It first refuses files of other model
families (SDXL, SUPIR, VAE, LLaVA, LoRA: the one rule in `rsvl_core.weights.families`), then detects the
architecture by the keys and builds it: rsvl's own (`OWN_ARCHITECTURES`: SR3, whose `denoise_fn.*` / UNet keys
are unambiguous, and Real-ESRGAN Compact, `compact.py`), then every architecture spandrel knows (ESRGAN,
Real-ESRGAN, SwinIR, HAT, DAT, SPAN, ...) in spandrel's own order. spandrel is imported only when a file is none
of ours (its registry imports torchvision, about a second of CPU). To add a stage-1 architecture: an
`OwnArchitecture` in `OWN_ARCHITECTURES`. spandrel's `MAIN_REGISTRY` (what ComfyUI loads its upscale models with)
is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..kit.errors import CheckpointError
from ..weights.checkpoint import reading_headers
from ..weights.families import refuse_family
from .compact import COMPACT_ID, COMPACT_NAME, is_compact_state, load_compact
from .loader import is_sr3_state, load_sr3

SR3_ID = "SR3"
EXPECTED_STAGE1 = ("a stage-1 checkpoint: an SR3 generator (*_gen.pth) or a single-image super-resolution model "
                   "spandrel recognises (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, SPAN, ...)")
STAGE1_ROLE = "a stage-1 model"


@dataclass(frozen=True)
class OwnArchitecture:
    """A stage-1 architecture rsvl detects and builds itself: `load(state, path)` gives the model on the CPU in
    float32 (the caller places it); `path` is the file (SR3 reads a config JSON beside it)."""

    id: str
    name: str
    detect: Callable[[dict[str, Any]], bool]
    load: Callable[[dict[str, torch.Tensor], Path], Any]


# detected in this order, before any of spandrel's: SR3 returns an `SR3Model` (a sampler with a noise schedule, not
# one forward pass; state-dict compatible with the released `*_gen.pth`), Compact a `CompactDescriptor`
OWN_ARCHITECTURES = (
    OwnArchitecture(SR3_ID, "SR3", is_sr3_state, lambda state, path: load_sr3(path, state=state)),
    OwnArchitecture(COMPACT_ID, COMPACT_NAME, is_compact_state, lambda state, path: load_compact(state)),
)


def detected_architecture(state: dict[str, Any]) -> OwnArchitecture | None:
    """The first of `OWN_ARCHITECTURES` whose detection takes `state`, else None (spandrel's registry decides)."""
    return next((arch for arch in OWN_ARCHITECTURES if arch.detect(state)), None)


def load_architecture(state: dict[str, torch.Tensor], path: Path) -> Any:
    """The one load of a stage-1 file's tensors: other model families refused, then the registry's detection and
    build; every failure is a one-line CheckpointError naming the file and what it expected."""
    path = Path(path)
    refuse_family(state, path, STAGE1_ROLE, EXPECTED_STAGE1)
    own = detected_architecture(state)
    if own is not None:
        with _building(path, f"it looks like {own.name}, but its tensors do not build one"):
            return own.load(state, path)
    import spandrel  # imported on use: only for files that are none of ours

    try:
        with _building(path, "spandrel could not build a model from it"):
            return spandrel.MAIN_REGISTRY.load(state)
    except spandrel.UnsupportedModelError:
        keys = ", ".join(sorted(state)[:4])
        raise CheckpointError(
            path, f"not SR3, and spandrel {spandrel.__version__} recognises no architecture in it ({len(state)} "
            f"tensors; first keys: {keys})", EXPECTED_STAGE1,
        ) from None


@contextmanager
def _building(path: Path, problem: str) -> Iterator[None]:
    """Build a detected architecture (on the meta device for a headers-only check); when the tensors do not fit
    it (strict load_state_dict reports missing/unexpected keys and shape mismatches over several lines), one
    CheckpointError line saying `problem` and the first 400 characters of why."""
    try:
        with torch.device("meta") if reading_headers() else nullcontext():  # a check: build without memory
            yield
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError, AssertionError, IndexError, TypeError, AttributeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise CheckpointError(path, f"{problem}: {detail}", EXPECTED_STAGE1) from None
