"""Where each stage's weights are looked for, and the error that says how to fix a missing one.

Layout of a models folder (the same under ComfyUI's `models/rsvl/`):

    <models dir>/sr3/<any name>.safetensors | .pth | .ckpt   SR3 generator (e.g. I..._E..._gen.pth)
    <models dir>/llava/config.json, model*.safetensors, ...  captioner in Hugging Face layout
                                                             (e.g. llava-hf/llama3-llava-next-8b-hf)
    <models dir>/llava_adapter/adapter_config.json + adapter_model.safetensors   the seed's LoRA (optional)
    <models dir>/sdxl/<any name>.safetensors | .ckpt          SDXL base single file (e.g. juggernautXL_v8),
                                                             or a diffusers SDXL folder (unet/, vae/, text_encoder*/)
    <models dir>/supir/<any name>.ckpt | .safetensors         SUPIR-v0Q or SUPIR-v0F

The `locate_*` functions look in ONE models folder (what `rsvl upscale` / `rsvl caption` use). The
`find_weights(stage, ...)` search (what `rsvl weights list|check` use) looks in these places, in order,
and stops at the first place that has the item (or that has it ambiguously / broken, which is reported):

    1. an explicit path (`--sr3`, `--llava`, `--adapter`, `--sdxl`, `--supir`)    -- no fallback when given
    2. `--models-dir D`                  D/<subdir>
    3. `$RSVL_MODELS_DIR`                $RSVL_MODELS_DIR/<subdir>
    4. `./models`                        ./models/<subdir>
    5. ComfyUI (`--comfyui-dir C`, then `$COMFYUI_DIR`)
                                         C/models/rsvl/<subdir>; SDXL and SUPIR also in C/models/checkpoints/
                                         (by name there: juggernautXL*v8*, SUPIR-v0Q*/SUPIR-v0F*)
    6. the seed's release layout         `--ckpt-pth DIR` (the CKPT_PTH folder or the folder holding it),
                                         then ./CKPT_PTH, ./pretrained_model/CKPT_PTH, <models roots>/CKPT_PTH:
                                         CKPT_PTH/Llava-next/ = the LoRA adapter, CKPT_PTH/v0Q.ckpt (else
                                         v0F.ckpt) = SUPIR, *_gen.pth anywhere under it = SR3, *.safetensors
                                         under it (outside Llava-next/) = SDXL. The base captioner is not in it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
        f"To try the install without weights: rsvl demo (`rsvl weights list` shows every place looked in)"
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
        f"folder with a {CAPTIONER_SUBDIR}/ subfolder. To try the install without weights: rsvl demo; "
        f"to download it: rsvl weights download captioner --models-dir {folder.parent}"
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
        f"stage 1 alone with --stage1-only. To try the install without weights: rsvl demo; "
        f"to download it: rsvl weights download sdxl --models-dir {folder.parent}"
    ))


def locate_supir(models_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """The SUPIR checkpoint: `explicit`, else the one file in `<models_dir>/supir/`."""
    if explicit is not None:
        return _explicit_file(explicit, "SUPIR checkpoint", "--supir")
    folder = (Path(models_dir) if models_dir is not None else default_models_dir()) / SUPIR_SUBDIR
    return _one_weight_file(weight_files(folder), folder, "SUPIR checkpoints", "--supir", (
        f"refiner SUPIR weights not found: no .ckpt/.safetensors file in {folder.resolve()}. Put SUPIR-v0Q.ckpt "
        f"(or SUPIR-v0F.ckpt) there, pass --supir PATH, or run stage 1 alone with --stage1-only. "
        f"To try the install without weights: rsvl demo; "
        f"to download it: rsvl weights download supir --models-dir {folder.parent}"
    ))


# --------------------------------------------------------------------------------------------------
# The search over several places (explicit -> --models-dir -> $RSVL_MODELS_DIR -> ./models -> ComfyUI
# -> the seed's CKPT_PTH). The single-folder `locate_*` functions above are unchanged.

COMFYUI_DIR_ENV = "COMFYUI_DIR"
SEED_CKPT_DIR = "CKPT_PTH"
SEED_ADAPTER_DIR = "Llava-next"


@dataclass(frozen=True)
class WeightsKind:
    """One row of the stage table: a kind of weights file or folder, and every name it goes by.

    id: what `rsvl weights` calls it; stage: the pipeline stage that uses it (stage1 / caption / refine);
    subdir: its folder in a models folder (and under ComfyUI's models/rsvl/); comfy_folder: the ComfyUI model
    folder the nodes list it from; flag: the CLI flag that names it directly; marker: the file a folder must
    hold (None for single files); shared_patterns: names that identify it in ComfyUI's shared checkpoints/.
    """

    id: str
    stage: str
    subdir: str
    comfy_folder: str
    flag: str
    marker: str | None = None
    shared_patterns: tuple[str, ...] = ()
    extensions: tuple[str, ...] = WEIGHT_SUFFIXES


STAGE_TABLE: dict[str, WeightsKind] = {kind.id: kind for kind in (
    WeightsKind("sr3", "stage1", SR3_SUBDIR, "rsvl_sr3", "--sr3"),
    WeightsKind("captioner", "caption", CAPTIONER_SUBDIR, "rsvl_llava", "--llava", marker="config.json"),
    WeightsKind("caption-adapter", "caption", ADAPTER_SUBDIR, "rsvl_llava_adapter", "--adapter",
                marker="adapter_config.json"),
    WeightsKind("sdxl", "refine", SDXL_SUBDIR, "checkpoints", "--sdxl", shared_patterns=("juggernautxl*v8*",)),
    WeightsKind("supir", "refine", SUPIR_SUBDIR, "rsvl_supir", "--supir",
                shared_patterns=("supir-v0q*", "supir-v0f*", "supir_v0q*", "supir_v0f*")),
)}
STAGES = tuple(STAGE_TABLE)
STAGE_SUBDIRS = {k.id: k.subdir for k in STAGE_TABLE.values()}
STAGE_FLAGS = {k.id: k.flag for k in STAGE_TABLE.values()}
# Names that identify a stage's file inside a SHARED folder (ComfyUI's checkpoints/), case-insensitive.
SHARED_FOLDER_PATTERNS = {k.id: k.shared_patterns for k in STAGE_TABLE.values() if k.shared_patterns}


@dataclass(frozen=True)
class SearchRoot:
    """One place weights are looked for: `kind` is explicit / models / comfyui / seed."""

    kind: str
    label: str
    path: Path


@dataclass
class Look:
    """What one place held for a stage."""

    label: str
    path: Path
    outcome: str


@dataclass
class FoundWeights:
    """The search's answer for one stage. `status`: found, missing, ambiguous (several candidates in the
    first place that had any) or invalid (the place is there but unusable, e.g. no adapter_config.json)."""

    stage: str
    status: str
    path: Path | None = None
    label: str | None = None
    looked: list[Look] = field(default_factory=list)
    message: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.status == "found"


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def _seed_ckpt_folder(path: Path) -> Path:
    """`path` itself, or its CKPT_PTH subfolder when it holds one (the seed checkout / unzipped release)."""
    return path / SEED_CKPT_DIR if (path / SEED_CKPT_DIR).is_dir() else path


def search_roots(models_dir: Path | None = None, comfyui_dir: Path | None = None, ckpt_dir: Path | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[SearchRoot]:
    """The places looked in, in order (duplicates removed); see the module docstring."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)

    def absolute(path: Path | str) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else cwd / path

    roots: list[SearchRoot] = []
    models: list[Path] = []
    for label, value in (("--models-dir", models_dir), (f"${MODELS_DIR_ENV}", env.get(MODELS_DIR_ENV) or None),
                         ("./models", "models")):
        if value is not None:
            roots.append(SearchRoot("models", label, absolute(value)))
            models.append(absolute(value))
    for label, value in (("--comfyui-dir", comfyui_dir), (f"${COMFYUI_DIR_ENV}", env.get(COMFYUI_DIR_ENV) or None)):
        if value is not None:
            roots.append(SearchRoot("comfyui", f"ComfyUI ({label})", absolute(value)))
    if ckpt_dir is not None:
        roots.append(SearchRoot("seed", "seed CKPT_PTH (--ckpt-pth)", _seed_ckpt_folder(absolute(ckpt_dir))))
    for path in (cwd / SEED_CKPT_DIR, cwd / "pretrained_model" / SEED_CKPT_DIR, *(m / SEED_CKPT_DIR for m in models)):
        roots.append(SearchRoot("seed", "seed CKPT_PTH", path))
    unique: list[SearchRoot] = []
    seen: set[tuple[str, Path]] = set()
    for root in roots:
        key = (root.kind, root.path.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(root)
    return unique


# Each finder returns (status, path, outcome text, notes); status is found / missing / ambiguous / invalid.
_Result = tuple[str, "Path | None", str, list]


def _several(found: list[Path], flag: str) -> _Result:
    names = ", ".join(p.name for p in found)
    return "ambiguous", None, f"several candidates ({names}); choose one with {flag} PATH", []


def _files_result(found: list[Path], flag: str, what: str = "no .safetensors/.pth/.ckpt file") -> _Result:
    if len(found) == 1:
        return "found", found[0], "found", []
    if len(found) > 1:
        return _several(found, flag)
    return "missing", None, what, []


def _in_stage_folder(stage: str, folder: Path) -> _Result:
    """The same rules as the `locate_*` function of `stage`, in one `<root>/<subdir>` folder."""
    if not folder.exists():
        return "missing", None, "no such folder", []
    if stage in ("sr3", "supir"):
        return _files_result(weight_files(folder), STAGE_FLAGS[stage])
    if stage == "captioner":
        if (folder / "config.json").is_file():
            return "found", folder, "found", []
        return "missing", None, "no config.json", []
    if stage == "caption-adapter":
        if (folder / "adapter_config.json").is_file():
            return "found", folder, "found", []
        return "invalid", None, "folder has no adapter_config.json (remove it or put the seed's LoRA there)", []
    if _is_diffusers_sdxl(folder):
        return "found", folder, "found (diffusers folder)", []
    found = weight_files(folder) + (sorted(p for p in folder.iterdir() if _is_diffusers_sdxl(p))
                                    if folder.is_dir() else [])
    return _files_result(found, "--sdxl")


def _matching(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return [p for p in weight_files(folder) if any(fnmatch.fnmatch(p.name.lower(), pat) for pat in patterns)]


def _prefer_v0q(found: list[Path], flag: str) -> _Result:
    """Both SUPIR variants side by side (as the seed ships them): v0Q, the seed's default, with a note."""
    v0q = [p for p in found if "v0q" in p.name.lower()]
    if len(found) > 1 and len(v0q) == 1:
        others = ", ".join(p.name for p in found if p != v0q[0])
        return "found", v0q[0], "found", [f"also there: {others} (use it with {flag} PATH)"]
    return _files_result(found, flag)


def _in_comfy_checkpoints(stage: str, folder: Path) -> _Result:
    if not folder.is_dir():
        return "missing", None, "no such folder", []
    found = _matching(folder, SHARED_FOLDER_PATTERNS[stage])
    if stage == "supir":
        return _prefer_v0q(found, "--supir")
    patterns = " / ".join(SHARED_FOLDER_PATTERNS[stage])
    return _files_result(found, STAGE_FLAGS[stage], f"no file named like {patterns}")


def _in_ckpt_pth(stage: str, folder: Path) -> _Result:
    if not folder.is_dir():
        return "missing", None, "no such folder", []
    if stage == "captioner":
        return "missing", None, "the seed's release has no base captioner (it is downloaded separately)", []
    if stage == "caption-adapter":
        adapter = folder / SEED_ADAPTER_DIR
        if not adapter.exists():
            return "missing", None, f"no {SEED_ADAPTER_DIR}/ folder", []
        if (adapter / "adapter_config.json").is_file():
            return "found", adapter, "found", []
        return "invalid", None, f"{SEED_ADAPTER_DIR}/ has no adapter_config.json", []
    if stage == "supir":
        names = {p.name.lower(): p for p in weight_files(folder)}
        found = [names[n] for n in ("v0q.ckpt", "supir-v0q.ckpt", "v0f.ckpt", "supir-v0f.ckpt") if n in names]
        return _prefer_v0q(found, "--supir") if found else ("missing", None, "no v0Q.ckpt / v0F.ckpt", [])
    adapter = folder / SEED_ADAPTER_DIR
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and adapter not in p.parents)
    if stage == "sr3":
        return _files_result([p for p in files if p.name.lower().endswith("_gen.pth")], "--sr3",
                             "no *_gen.pth file under it")
    found = [p for p in files if p.suffix.lower() in (".safetensors", ".sft")]
    preferred = [p for p in found if fnmatch.fnmatch(p.name.lower(), SHARED_FOLDER_PATTERNS["sdxl"][0])]
    if len(found) > 1 and len(preferred) == 1:
        found = preferred
    return _files_result(found, "--sdxl", "no .safetensors file under it")


def _explicit(stage: str, path: Path) -> FoundWeights:
    path = Path(path)
    ok = {"sr3": path.is_file(), "supir": path.is_file(), "captioner": (path / "config.json").is_file(),
          "caption-adapter": (path / "adapter_config.json").is_file(),
          "sdxl": path.is_file() or _is_diffusers_sdxl(path)}[stage]
    label = STAGE_FLAGS[stage]
    if ok:
        return FoundWeights(stage, "found", path, label, [Look(label, path, "found")])
    problem = {"captioner": "no config.json", "caption-adapter": "no adapter_config.json",
               "sdxl": "neither a file nor a diffusers SDXL folder"}.get(stage, "does not exist")
    return FoundWeights(stage, "invalid", None, None, [Look(label, path, problem)], f"{label} {path}: {problem}")


def find_weights(stage: str, *, explicit: Path | None = None, models_dir: Path | None = None,
                 comfyui_dir: Path | None = None, ckpt_dir: Path | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> FoundWeights:
    """Look for one stage's weights in the documented order; every place looked in is recorded."""
    _check_stage(stage)
    if explicit is not None:
        return _explicit(stage, explicit)
    subdir = STAGE_SUBDIRS[stage]
    looked: list[Look] = []
    for root in search_roots(models_dir, comfyui_dir, ckpt_dir, env, cwd):
        if root.kind == "models":
            places = [(root.label, root.path / subdir, lambda f: _in_stage_folder(stage, f))]
        elif root.kind == "comfyui":
            places = [(root.label, root.path / "models" / "rsvl" / subdir, lambda f: _in_stage_folder(stage, f))]
            if stage in SHARED_FOLDER_PATTERNS:
                places.append((root.label, root.path / "models" / "checkpoints",
                               lambda f: _in_comfy_checkpoints(stage, f)))
        else:
            places = [(root.label, root.path, lambda f: _in_ckpt_pth(stage, f))]
        for label, folder, finder in places:
            status, path, outcome, notes = finder(folder)
            looked.append(Look(label, folder, outcome))
            if status == "missing":
                continue
            message = None if status == "found" else f"{folder}: {outcome}"
            return FoundWeights(stage, status, path, label, looked, message, notes)
    return FoundWeights(stage, "missing", None, None, looked)



def locate(stage: str, models_dir: Path, explicit: Path | None = None,
           notify: Callable[[str], None] | None = None, ckpt_dir: Path | None = None) -> Path:
    """One stage's weights for a run: `explicit`, else the models folder, else the wider search order of
    `rsvl weights list` ($COMFYUI_DIR's model folders, the seed's CKPT_PTH layout, `ckpt_dir` first). When
    missing everywhere, the models folder's error (which says how to fix it) is raised. `notify` hears where a
    file was found outside the models folder."""
    locators = {"sr3": locate_sr3, "captioner": locate_captioner, "sdxl": locate_sdxl, "supir": locate_supir}
    try:
        return locators[stage](models_dir, explicit)
    except WeightsNotFoundError:
        if explicit is not None:
            raise
        found = find_weights(stage, models_dir=models_dir, ckpt_dir=ckpt_dir)
        if not found.found:
            raise
        if notify is not None:
            notify(f"{stage}: using {found.path} ({found.label})")
        return found.path
