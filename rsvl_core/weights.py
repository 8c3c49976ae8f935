"""Where each stage's weights are looked for, and the error that says how to fix a missing one.

Layout of a models folder (the same under ComfyUI's `models/rsvl/`):

    <models dir>/sr3/<any name>.safetensors | .pth | .ckpt   SR3 generator (e.g. I..._E..._gen.pth)
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import WeightsNotFoundError

MODELS_DIR_ENV = "RSVL_MODELS_DIR"
SR3_SUBDIR = "sr3"
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt")


def default_models_dir() -> Path:
    """`$RSVL_MODELS_DIR` if set, else `./models`."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


def weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES and not p.name.startswith("."))


def locate_sr3(models_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """The SR3 checkpoint: `explicit` if given, else the one file in `<models_dir>/sr3/`."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise WeightsNotFoundError(f"SR3 checkpoint not found: --sr3 {explicit} does not exist")
        return Path(explicit)
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    folder = models_dir / SR3_SUBDIR
    found = weight_files(folder)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise WeightsNotFoundError(f"several SR3 checkpoints in {folder} ({names}); choose one with --sr3 PATH")
    raise WeightsNotFoundError(
        f"stage-1 SR3 weights not found: no .safetensors/.pth/.ckpt file in {folder.resolve()}. "
        f"Put the SR3 generator checkpoint (the seed's *_gen.pth) there, pass --sr3 PATH, or point "
        f"--models-dir / ${MODELS_DIR_ENV} at a folder with a {SR3_SUBDIR}/ subfolder. "
        f"To try the install without weights: rsvl demo"
    )
