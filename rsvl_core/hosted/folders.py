"""The host's model folders (ComfyUI's `folder_paths`, passed in): our folders registered from the weights table,
the choices each model input lists, and the sample image the shipped templates open."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..kit.errors import WeightsNotFoundError
from ..weights.catalogue import WEIGHTS
from ..weights.checkpoint import SAFETENSORS_SUFFIXES, safetensors_keys
from ..weights.families import FAMILY

log = logging.getLogger("rsvl")
UPSCALE_MODELS = "upscale_models"  # ComfyUI's own folder of single-image SR models (spandrel loads them)

# From the engine's one weights table: our ComfyUI model folders -> (sub-folder of models/rsvl, file extensions;
# None = model folders, not files), and each folder's table entry. SDXL lives in ComfyUI's checkpoints/.
MODEL_FOLDERS: dict[str, tuple[str, set[str] | None]] = {
    entry.comfy_folder: (entry.subdir, None if entry.marker else set(entry.extensions))
    for entry in WEIGHTS.values() if entry.comfy_folder.startswith("rsvl_")
}
FOLDER_ENTRIES = {entry.comfy_folder: entry for entry in WEIGHTS.values() if entry.marker}
FOLDERS = {entry.id: entry.comfy_folder for entry in WEIGHTS.values()}  # e.g. "sdxl" -> "checkpoints"



def register_model_folders(folder_paths) -> None:
    """Add models/rsvl/{sr3,llava,llava_adapter,supir} after any extra_model_paths.yaml entries of the same name."""
    base = os.path.join(folder_paths.models_dir, "rsvl")
    for name, (sub, extensions) in MODEL_FOLDERS.items():
        folder_paths.add_model_folder_path(name, os.path.join(base, sub))
        if extensions:
            paths, known = folder_paths.folder_names_and_paths[name]
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def list_model_folders(folder_paths, name: str) -> list[str]:
    """Sub-folders (of every registered path) that the table entry accepts: the choices of a folder model."""
    entry = FOLDER_ENTRIES[name]
    found: set[str] = set()
    for root in folder_paths.get_folder_paths(name):
        if not os.path.isdir(root):
            continue
        found.update(sub for sub in os.listdir(root) if entry.holds(Path(root, sub)))
    return sorted(found)


def find_model_folder(folder_paths, name: str, choice: str) -> str:
    entry = FOLDER_ENTRIES[name]
    for root in folder_paths.get_folder_paths(name):
        candidate = os.path.join(root, choice)
        if entry.holds(Path(candidate)):
            return candidate
    raise WeightsNotFoundError(
        f"{choice!r} is not a model folder in {', '.join(folder_paths.get_folder_paths(name))} "
        f"(each choice is a sub-folder holding {entry.marker})"
    )


def stage1_choices(folder_paths) -> list[str]:
    """The stage-1 model choices: SR3 files in models/rsvl/sr3, then ComfyUI's upscale models as
    `upscale_models/<file>` (any architecture spandrel recognises)."""
    extra = folder_paths.get_filename_list(UPSCALE_MODELS) if UPSCALE_MODELS in folder_paths.folder_names_and_paths \
        else []
    return [*folder_paths.get_filename_list(FOLDERS["sr3"]), *(f"{UPSCALE_MODELS}/{name}" for name in extra)]


def find_stage1_file(folder_paths, choice: str) -> str:
    """A stage-1 choice (see `stage1_choices`) -> its file path."""
    prefix = UPSCALE_MODELS + "/"
    if choice.startswith(prefix):
        return find_model_file(folder_paths, UPSCALE_MODELS, choice[len(prefix):])
    return find_model_file(folder_paths, FOLDERS["sr3"], choice)


MODEL_PATCHES = "model_patches"  # where core ComfyUI (>= 0.20, SUPIRApply) keeps SUPIR files: offered too
SUPIR_CONTROL_KEY = FAMILY["supir-control"].signature  # a SUPIR file's signature tensor (the families table)


def is_supir_file(path: str) -> bool:
    """Whether a file in models/model_patches is a SUPIR checkpoint: by its safetensors header (no tensor is
    read), else (a pickle) by "supir" in its name. model_patches also holds other patch kinds."""
    if path.lower().endswith(SAFETENSORS_SUFFIXES):
        try:
            return SUPIR_CONTROL_KEY in safetensors_keys(path)
        except (OSError, ValueError):  # unreadable: not offered (a load would say why)
            return False
    return "supir" in os.path.basename(path).lower()


def supir_choices(folder_paths) -> list[str]:
    """SUPIR choices: files in models/rsvl/supir, then SUPIR files of models/model_patches as
    `model_patches/<file>` (where core ComfyUI's own SUPIR nodes look for them)."""
    own = folder_paths.get_filename_list(FOLDERS["supir"])
    if MODEL_PATCHES not in folder_paths.folder_names_and_paths:
        return own
    patches = [name for name in folder_paths.get_filename_list(MODEL_PATCHES)
               if is_supir_file(folder_paths.get_full_path(MODEL_PATCHES, name) or "")]
    return [*own, *(f"{MODEL_PATCHES}/{name}" for name in patches)]


def find_supir_file(folder_paths, choice: str) -> str:
    """A SUPIR choice (see `supir_choices`) -> its file path."""
    prefix = MODEL_PATCHES + "/"
    if choice.startswith(prefix):
        return find_model_file(folder_paths, MODEL_PATCHES, choice[len(prefix):])
    return find_model_file(folder_paths, FOLDERS["supir"], choice)


def host_has_core_supir() -> bool:
    """Whether this ComfyUI has core's SUPIR nodes (SUPIRApply, ComfyUI >= 0.20): its model_patches SUPIR files
    then run in either refiner; README "SUPIR in core ComfyUI" says what ours adds."""
    try:
        from comfy_extras import nodes_model_patch  # core's model-patch nodes (absent outside ComfyUI, or older)
    except ImportError:
        return False
    return hasattr(nodes_model_patch, "SUPIRApply")


def find_model_file(folder_paths, name: str, choice: str) -> str:
    path = folder_paths.get_full_path(name, choice)
    if path is None:
        raise WeightsNotFoundError(f"{choice!r} not found in {', '.join(folder_paths.get_folder_paths(name))}")
    return path



# The image the shipped templates' LoadImage names: the bundled sample, copied into ComfyUI's input folder.
SAMPLE_NAME = "rsvl_sample.png"
SAMPLE_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples",
                             "osbs_029_lr100.png")


def provide_sample(input_dir: str, source: str = SAMPLE_SOURCE, name: str = SAMPLE_NAME) -> bool:
    """Copy the bundled sample to `input_dir/name` so a template runs on the first click; a file of that name
    already there (the user's own, or ours from before) is never touched. True when the copy was made."""
    target = os.path.join(input_dir, name)
    try:
        os.makedirs(input_dir, exist_ok=True)
        with open(source, "rb") as src, open(target, "xb") as dst:  # "x": fails if the file exists
            dst.write(src.read())
    except FileExistsError:
        return False
    except OSError as exc:  # a read-only input folder must not stop the pack from loading
        log.warning("rsvl: could not copy the sample image to %s (%s)", target, exc)
        return False
    return True
