"""Which model family a checkpoint belongs to, told by its keys: one table, so that every loader names a wrong
file the same way ("this looks like an SDXL/SUPIR checkpoint, not a stage-1 model") and the refiner's loader
checks its two files by the same signatures.

Order matters: the first family any of whose prefixes a state dict holds is the answer (an SDXL or SUPIR single
file holds `model.diffusion_model.*` and also the VAE / text-encoder prefixes further down).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..kit.errors import CheckpointError


@dataclass(frozen=True)
class ModelFamily:
    """A family of checkpoints: keys start with `prefix`; a complete file of it holds `signature` (when known)."""

    id: str
    description: str
    prefix: str
    signature: str | None = None


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("ldm-unet", "an SDXL/SUPIR (LDM single-file) checkpoint", "model.diffusion_model.",
                signature="model.diffusion_model.input_blocks.0.0.weight"),
    ModelFamily("supir-control", "a SUPIR control-model checkpoint", "model.control_model.",
                signature="model.control_model.input_hint_block.0.weight"),
    ModelFamily("ldm-vae", "a Stable Diffusion VAE / single-file checkpoint", "first_stage_model."),
    ModelFamily("sdxl-text", "an SDXL text-encoder checkpoint", "conditioner.embedders."),
    ModelFamily("llava", "a vision-language (LLaVA) checkpoint", "language_model."),
    ModelFamily("language-model", "a language-model checkpoint", "model.layers."),
    ModelFamily("lora", "a PEFT LoRA adapter", "base_model.model."),
)
FAMILY = {family.id: family for family in FAMILIES}


def family_of(keys: Iterable[str]) -> ModelFamily | None:
    """The first family of the table that any key belongs to (by prefix), or None (e.g. an SR model)."""
    keys = list(keys)
    return next((f for f in FAMILIES if any(k.startswith(f.prefix) for k in keys)), None)


def refuse_family(keys: Iterable[str], path: Path, role: str, expected: str) -> None:
    """The one rule for a file of another family given as `role` (e.g. "a stage-1 model"): a CheckpointError
    naming the file and what it looks like, so no loader builds a wrong model from it."""
    if (family := family_of(keys)) is not None:
        raise CheckpointError(Path(path), f"this looks like {family.description}, not {role}", expected)
