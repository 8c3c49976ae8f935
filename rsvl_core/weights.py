"""Where each stage's weights are looked for, and the error that says how to fix a missing one.

Layout of a models folder (the same under ComfyUI's `models/rsvl/`):

    <models dir>/sr3/<any name>.safetensors | .pth | .ckpt   SR3 generator (e.g. I..._E..._gen.pth)
    <models dir>/llava/config.json, model*.safetensors, ...  captioner in Hugging Face layout
                                                             (e.g. llava-hf/llama3-llava-next-8b-hf)
    <models dir>/llava_adapter/adapter_config.json + adapter_model.safetensors   the seed's LoRA (optional)
    <models dir>/sdxl/<any name>.safetensors | .ckpt          SDXL base single file (e.g. juggernautXL_v8),
                                                             or a diffusers SDXL folder (unet/, vae/, text_encoder*/)
    <models dir>/supir/<any name>.ckpt | .safetensors         SUPIR-v0Q or SUPIR-v0F
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import WeightsNotFoundError

MODELS_DIR_ENV = "RSVL_MODELS_DIR"
SR3_SUBDIR = "sr3"
CAPTIONER_SUBDIR = "llava"
ADAPTER_SUBDIR = "llava_adapter"
SDXL_SUBDIR = "sdxl"
SUPIR_SUBDIR = "supir"
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt")


def default_models_dir() -> Path:
    """`$RSVL_MODELS_DIR` if set, else `./models`."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


def weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES and not p.name.startswith("."))


def _one_weight_file(found: list[Path], folder: Path, what: str, flag: str, not_found: str) -> Path:
    """The single candidate in `folder`; an error naming the choices or saying how to fix an empty folder."""
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise WeightsNotFoundError(f"several {what} in {folder} ({names}); choose one with {flag} PATH")
    raise WeightsNotFoundError(not_found)


def _explicit_file(explicit: Path, what: str, flag: str) -> Path:
    if not Path(explicit).is_file():
        raise WeightsNotFoundError(f"{what} not found: {flag} {explicit} does not exist")
    return Path(explicit)


def locate_sr3(models_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """The SR3 checkpoint: `explicit` if given, else the one file in `<models_dir>/sr3/`."""
    if explicit is not None:
        return _explicit_file(explicit, "SR3 checkpoint", "--sr3")
    folder = (Path(models_dir) if models_dir is not None else default_models_dir()) / SR3_SUBDIR
    return _one_weight_file(weight_files(folder), folder, "SR3 checkpoints", "--sr3", (
        f"stage-1 SR3 weights not found: no .safetensors/.pth/.ckpt file in {folder.resolve()}. "
        f"Put the SR3 generator checkpoint (the seed's *_gen.pth) there, pass --sr3 PATH, or point "
        f"--models-dir / ${MODELS_DIR_ENV} at a folder with a {SR3_SUBDIR}/ subfolder. "
        f"To try the install without weights: rsvl demo"
    ))


def locate_captioner(models_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """The captioner's model folder: `explicit` if given, else `<models_dir>/llava/` (must hold config.json)."""
    if explicit is not None:
        if not (Path(explicit) / "config.json").is_file():
            raise WeightsNotFoundError(f"captioner model folder not usable: {explicit} has no config.json "
                                       f"(expected a Hugging Face model folder, e.g. llava-hf/llama3-llava-next-8b-hf)")
        return Path(explicit)
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    folder = models_dir / CAPTIONER_SUBDIR
    if (folder / "config.json").is_file():
        return folder
    raise WeightsNotFoundError(
        f"captioner weights not found: no config.json in {folder.resolve()}. Put a Hugging Face-layout "
        f"LLaVA-NeXT folder there (e.g. a local copy of llava-hf/llama3-llava-next-8b-hf: config.json, "
        f"model*.safetensors, tokenizer and processor files), or point --models-dir / ${MODELS_DIR_ENV} at a "
        f"folder with a {CAPTIONER_SUBDIR}/ subfolder. To try the install without weights: rsvl demo"
    )


def locate_caption_adapter(models_dir: Path | None = None, explicit: Path | None = None) -> Path | None:
    """The LoRA adapter folder: `explicit` if given, else `<models_dir>/llava_adapter/` if present, else None."""
    if explicit is not None:
        if not (Path(explicit) / "adapter_config.json").is_file():
            raise WeightsNotFoundError(f"caption adapter not usable: {explicit} has no adapter_config.json "
                                       f"(expected the seed's PEFT LoRA folder: adapter_config.json + "
                                       f"adapter_model.safetensors or .bin)")
        return Path(explicit)
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    folder = models_dir / ADAPTER_SUBDIR
    if not folder.exists():
        return None
    if not (folder / "adapter_config.json").is_file():
        raise WeightsNotFoundError(
            f"caption adapter folder {folder.resolve()} has no adapter_config.json. Put the seed's LoRA adapter "
            f"there (adapter_config.json + adapter_model.safetensors or .bin), or remove the folder to caption "
            f"without it"
        )
    return folder


def _is_diffusers_sdxl(folder: Path) -> bool:
    return (folder / "unet" / "config.json").is_file() and (folder / "vae" / "config.json").is_file()


def locate_sdxl(models_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """The SDXL base model: `explicit`, else the one file (or diffusers folder) in `<models_dir>/sdxl/`."""
    if explicit is not None:
        explicit = Path(explicit)
        if explicit.is_file() or _is_diffusers_sdxl(explicit):
            return explicit
        raise WeightsNotFoundError(f"SDXL model not found: --sdxl {explicit} is neither a file nor a diffusers "
                                   f"SDXL folder (unet/, vae/, text_encoder/, text_encoder_2/)")
    folder = (Path(models_dir) if models_dir is not None else default_models_dir()) / SDXL_SUBDIR
    if _is_diffusers_sdxl(folder):
        return folder
    found = weight_files(folder) + (sorted(p for p in folder.iterdir() if _is_diffusers_sdxl(p))
                                    if folder.is_dir() else [])
    return _one_weight_file(found, folder, "SDXL models", "--sdxl", (
        f"refiner SDXL weights not found: no .safetensors/.ckpt file in {folder.resolve()}. Put the SDXL base "
        f"single file there (the seed uses juggernautXL_v8Rundiffusion.safetensors), pass --sdxl PATH, or run "
        f"stage 1 alone with --stage1-only. To try the install without weights: rsvl demo"
    ))


def locate_supir(models_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """The SUPIR checkpoint: `explicit`, else the one file in `<models_dir>/supir/`."""
    if explicit is not None:
        return _explicit_file(explicit, "SUPIR checkpoint", "--supir")
    folder = (Path(models_dir) if models_dir is not None else default_models_dir()) / SUPIR_SUBDIR
    return _one_weight_file(weight_files(folder), folder, "SUPIR checkpoints", "--supir", (
        f"refiner SUPIR weights not found: no .ckpt/.safetensors file in {folder.resolve()}. Put SUPIR-v0Q.ckpt "
        f"(or SUPIR-v0F.ckpt) there, pass --supir PATH, or run stage 1 alone with --stage1-only. "
        f"To try the install without weights: rsvl demo"
    ))
