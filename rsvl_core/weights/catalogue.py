"""The one weights table and the one lookup: every face (`rsvl upscale|caption|batch|eval`, `rsvl weights`, the
job API, the ComfyUI nodes) finds a model file the same way, from the same data.

`WEIGHTS` has one `WeightsEntry` per kind of model file: its folder name, the flag that names it, what counts as
one (files by suffix, a folder by the file it holds), where ComfyUI and the seed's release keep it, where it is
downloaded from and the published hashes. `find_weights(id, ...)` looks for one entry in these places, in order,
and stops at the first place that has it (or has it ambiguously / broken, which is reported). A folder named
by a flag (--models-dir, --comfyui-dir, --ckpt-pth) must be one: a typo or a file is refused, never passed over:

    1. an explicit path (`--sr3`, `--llava`, `--adapter`, `--sdxl`, `--supir`)    -- no fallback when given
    2. `--models-dir D`                  D/<subdir>
    3. `$RSVL_MODELS_DIR`                $RSVL_MODELS_DIR/<subdir>
    4. `./models`                        ./models/<subdir>
    5. ComfyUI (`--comfyui-dir C`, then `$COMFYUI_DIR`)
                                         C/models/rsvl/<subdir>; SDXL and SUPIR also in C/models/checkpoints/
                                         (by name there: juggernautXL*v8*, SUPIR-v0Q*/SUPIR-v0F*); stage 1 also
                                         in C/models/upscale_models/ (the one model there, else name it)
    6. the seed's release layout         `--ckpt-pth DIR` (the CKPT_PTH folder or the folder holding it),
                                         then ./CKPT_PTH, ./pretrained_model/CKPT_PTH, <models roots>/CKPT_PTH:
                                         CKPT_PTH/Llava-next/ = the LoRA adapter, CKPT_PTH/v0Q.ckpt (else
                                         v0F.ckpt) = SUPIR, *_gen.pth anywhere under it = SR3, *.safetensors
                                         under it (outside Llava-next/) = SDXL. The base captioner is not in it.

Layout of a models folder (the same under ComfyUI's `models/rsvl/`, where a model folder may also sit one level
down, e.g. `llava/llama3-llava-next-8b-hf/config.json`, as the nodes list them):

    <models dir>/sr3/<any name>.safetensors | .pth | .ckpt   stage 1 (the seed's SR3 I..._E..._gen.pth, or any
                                                             single-image SR model spandrel recognises)
    <models dir>/llava/config.json, model*.safetensors, ...  captioner in Hugging Face layout
                                                             (e.g. llava-hf/llama3-llava-next-8b-hf)
    <models dir>/llava_adapter/adapter_config.json + adapter_model.safetensors   the seed's LoRA (optional)
    <models dir>/sdxl/<any name>.safetensors | .ckpt          SDXL base single file (e.g. juggernautXL_v8),
                                                             or a diffusers SDXL folder (unet/, vae/, text_encoder*/)
    <models dir>/supir/<any name>.ckpt | .safetensors         SUPIR-v0Q or SUPIR-v0F
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..kit.errors import RsvlError, WeightsNotFoundError
from .checkpoint import WEIGHT_SUFFIXES

MODELS_DIR_ENV = "RSVL_MODELS_DIR"
COMFYUI_DIR_ENV = "COMFYUI_DIR"
SEED_CKPT_DIR = "CKPT_PTH"
SEED_ZIP_URL = "https://drive.google.com/file/d/1OJ2wi75Ivdwtp8TjncQGpXjDqdwxVpL3/view?usp=sharing"


# ------------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class KnownFile:
    """A released file whose size / sha256 someone published. `strict`: a mismatch means a bad file (else a note:
    the same model may exist as other, equally valid uploads)."""

    name: str
    size: int | None
    sha256: str | None
    source: str
    strict: bool = True
    aliases: tuple[str, ...] = ()

    def matches_name(self, name: str) -> bool:
        """Whether `name` is this file's published name or one of its aliases (case-insensitive)."""
        return name.lower() in {n.lower() for n in (self.name, *self.aliases)}


@dataclass(frozen=True)
class HubSource:
    """Where a downloadable entry comes from: a single file (`filename`) or a whole repo (snapshot)."""

    repo_id: str
    filename: str | None = None
    allow_patterns: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """The repo's page on the Hugging Face Hub (named in errors, for downloading by hand)."""
        return f"https://huggingface.co/{self.repo_id}"


@dataclass(frozen=True)
class SeedPlace:
    """Where an entry sits in the seed's release folder CKPT_PTH/: a sub-folder that is the item, exact file names
    directly in it (in order of preference), or name patterns matched anywhere under it."""

    folder: str | None = None
    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightsEntry:
    """One row of the weights table: a kind of model file or folder, where it is looked for, and how to get it.

    id: what `rsvl weights` calls it; stage: the pipeline stage using it (stage1 / caption / refine); title,
    needed_for, accepts: for people; what, put, skip: the parts of the not-found message (its subject, what to put
    in the folder, how to run without it); subdir: its folder in a models folder and in ComfyUI's models/rsvl/;
    flag: the command-line flag naming it directly; comfy_folder: the ComfyUI model folder the nodes list it from.
    marker: a folder item holds this file (None: a single file); folder_form: files that make a folder count as a
    file item's folder form (a diffusers SDXL folder); configs: the JSON files `rsvl weights check` parses in a
    folder item; comfy_checkpoints: name patterns that identify it in ComfyUI's shared models/checkpoints/;
    prefer: name patterns that win among several candidates in a shared folder (checkpoints/, CKPT_PTH/);
    seed: where the seed's release keeps it (None: not in the release, `seed_absent` says why); hub / variants /
    manual: where it is downloaded from, or the steps to get it by hand; known: published sizes and hashes.
    """

    id: str
    stage: str
    title: str
    needed_for: str
    required: bool
    accepts: str
    what: str
    put: str
    subdir: str
    flag: str
    comfy_folder: str
    skip: str = ""
    marker: str | None = None
    folder_form: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    extensions: tuple[str, ...] = WEIGHT_SUFFIXES
    comfy_checkpoints: tuple[str, ...] = ()
    comfy_models: tuple[str, ...] = ()  # other ComfyUI model folders that hold this kind (stage 1: upscale_models)
    prefer: tuple[str, ...] = ()
    seed: SeedPlace | None = None
    seed_absent: str = ""
    hub: HubSource | None = None
    variants: Mapping[str, HubSource] = field(default_factory=dict)
    manual: str | None = None
    known: tuple[KnownFile, ...] = ()

    @property
    def kind(self) -> str:
        """Either "folder" (a model folder holding `marker`) or "file" (one weights file, or a folder form)."""
        return "folder" if self.marker else "file"

    @property
    def downloadable(self) -> bool:
        """Whether `rsvl weights download` can fetch it (else `manual` says how to get it)."""
        return self.hub is not None or bool(self.variants)

    def holds(self, path: Path) -> bool:
        """Whether `path` itself is this item: a folder with its marker, a weights file, or the folder form."""
        path = Path(path)
        if self.marker:
            return (path / self.marker).is_file()
        if path.is_file():
            return True
        return bool(self.folder_form) and all((path / part).is_file() for part in self.folder_form)

    def files_in(self, folder: Path) -> list[Path]:
        """The weights files directly in `folder` (by suffix; hidden files skipped), sorted."""
        return weight_files(folder, self.extensions)


def _seed_zip_steps(what: str) -> str:
    return (f"only in the seed's release: download pretrained_model.zip from {SEED_ZIP_URL} (a browser, or "
            f"`pip install gdown && gdown 1OJ2wi75Ivdwtp8TjncQGpXjDqdwxVpL3`), unzip it, and {what}; "
            f"or point --ckpt-pth at the unzipped CKPT_PTH folder")


SUPIR_V0Q = HubSource("camenduru/SUPIR", "SUPIR-v0Q.ckpt")
SUPIR_V0F = HubSource("camenduru/SUPIR", "SUPIR-v0F.ckpt")
SKIP_REFINER = "run stage 1 alone with --stage1-only"

WEIGHTS: dict[str, WeightsEntry] = {entry.id: entry for entry in (
    WeightsEntry(
        "sr3", "stage1", "SR3 generator (stage 1, 8x, trained 28->224 on AID)", "stage 1", True,
        "any *.pth / *.ckpt / *.safetensors (the seed's I<iter>_E<epoch>_gen.pth)",
        what="stage-1 SR3 weights", put="the SR3 generator checkpoint (the seed's *_gen.pth)",
        subdir="sr3", flag="--sr3", comfy_folder="rsvl_sr3", comfy_models=("upscale_models",),
        seed=SeedPlace(patterns=("*_gen.pth",)),
        manual=_seed_zip_steps("copy the *_gen.pth file found under CKPT_PTH/ into <models>/sr3/"),
    ),
    WeightsEntry(
        "captioner", "caption", "LLaVA-NeXT (Llama-3 8B) captioner, Hugging Face layout", "caption (unless "
        "--caption/--stage1-only)", True,
        "a Hugging Face model folder: config.json, model*.safetensors, tokenizer and processor files",
        what="captioner weights",
        put="a Hugging Face-layout LLaVA-NeXT folder (e.g. a local copy of llava-hf/llama3-llava-next-8b-hf: "
            "config.json, model*.safetensors, tokenizer and processor files)",
        subdir="llava", flag="--llava", comfy_folder="rsvl_llava", marker="config.json",
        seed_absent="the seed's release has no base captioner (it is downloaded separately)",
        hub=HubSource("llava-hf/llama3-llava-next-8b-hf",
                      allow_patterns=("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model")),
    ),
    WeightsEntry(
        "caption-adapter", "caption", "the seed's LoRA adapter for the captioner", "caption (optional: the seed's "
        "tuning)", False,
        "a PEFT folder: adapter_config.json + adapter_model.safetensors (or .bin), maybe non_lora_trainables.bin",
        what="caption adapter", put="the seed's LoRA adapter (adapter_config.json + adapter_model.safetensors or .bin)",
        subdir="llava_adapter", flag="--adapter", comfy_folder="rsvl_llava_adapter", marker="adapter_config.json",
        seed=SeedPlace(folder="Llava-next"),
        manual=_seed_zip_steps("copy the folder CKPT_PTH/Llava-next/ to <models>/llava_adapter/"),
    ),
    WeightsEntry(
        "sdxl", "refine", "SDXL base: Juggernaut XL v8 + RunDiffusion (single file)", "refiner (unless "
        "--stage1-only)", True,
        "one *.safetensors / *.ckpt SDXL single file (the seed's juggernautXL_v8Rundiffusion.safetensors), "
        "or a diffusers SDXL folder",
        what="refiner SDXL weights",
        put="the SDXL base single file (the seed uses juggernautXL_v8Rundiffusion.safetensors)", skip=SKIP_REFINER,
        subdir="sdxl", flag="--sdxl", comfy_folder="checkpoints",
        folder_form=("unet/config.json", "vae/config.json"),
        configs=("unet/config.json", "vae/config.json", "text_encoder/config.json", "text_encoder_2/config.json"),
        comfy_checkpoints=("juggernautxl*v8*",), prefer=("juggernautxl*v8*",),
        seed=SeedPlace(patterns=("*.safetensors", "*.sft")),
        hub=HubSource("RunDiffusion/Juggernaut-XL-v8", "juggernautXL_v8Rundiffusion.safetensors"),
        known=(KnownFile(
            "juggernautXL_v8Rundiffusion.safetensors", 7105348592,
            "aeb7e9e6897a1e58b10494bd989d001e3d4bc9b634633cd7b559838f612c2867",
            "LFS pointers of Hub mirrors of the Civitai v8 release (model 133005, version 288982), e.g. "
            "frankjoshua/juggernautXL_v8Rundiffusion, metercai/SimpleSDXL; RunDiffusion/Juggernaut-XL-v8's copy "
            "was not checked",
            strict=False),),
    ),
    WeightsEntry(
        "supir", "refine", "SUPIR checkpoint (v0Q, the seed's default; v0F also released)", "refiner (unless "
        "--stage1-only)", True,
        "one *.ckpt / *.safetensors: SUPIR-v0Q.ckpt or SUPIR-v0F.ckpt (the seed names them v0Q.ckpt / v0F.ckpt)",
        what="refiner SUPIR weights", put="SUPIR-v0Q.ckpt (or SUPIR-v0F.ckpt)", skip=SKIP_REFINER,
        subdir="supir", flag="--supir", comfy_folder="rsvl_supir",
        comfy_checkpoints=("supir-v0q*", "supir-v0f*", "supir_v0q*", "supir_v0f*"), prefer=("*v0q*",),
        seed=SeedPlace(names=("v0Q.ckpt", "SUPIR-v0Q.ckpt", "v0F.ckpt", "SUPIR-v0F.ckpt")),
        hub=SUPIR_V0Q, variants={"v0Q": SUPIR_V0Q, "v0F": SUPIR_V0F},
        known=(
            KnownFile("SUPIR-v0Q.ckpt", 5329810432,
                      "d7f418398bb024d0d3c779c4ee4e9f171eb072306093f5bcfb2bf096aa2738f8",
                      "LFS pointer of camenduru/SUPIR (commit 97b24ec)", aliases=("v0Q.ckpt",)),
            KnownFile("SUPIR-v0F.ckpt", None,  # published as "5.33 GB"; the exact byte count is not known here
                      "9d8906255e2a2cc97b52d95d575461eca2a8971647d5e3e763291965c3a35314",
                      "LFS pointer of camenduru/SUPIR (commit 97b24ec)", aliases=("v0F.ckpt",)),
        ),
    ),
)}


def weights_entry(item: str) -> WeightsEntry:
    """The table's entry for `item` (sr3, captioner, caption-adapter, sdxl, supir); RsvlError naming the choices."""
    if item not in WEIGHTS:
        raise RsvlError(f"unknown weights {item!r}; one of {', '.join(WEIGHTS)}")
    return WEIGHTS[item]


def default_models_dir() -> Path:
    """`$RSVL_MODELS_DIR` if set, else `./models`: where downloads go when no --models-dir is given."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


def weight_files(folder: Path, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> list[Path]:
    """The weights files directly in `folder` (by suffix; hidden files skipped), sorted; [] if no such folder."""
    if not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def fix_command(entry: WeightsEntry, models_dir: Path | None) -> str:
    """The exact command (or, for the seed-only files, the steps) that puts a missing item in place."""
    target = Path(models_dir) if models_dir is not None else default_models_dir()
    if entry.downloadable:
        return f"rsvl weights download {entry.id} --models-dir {target}"
    assert entry.manual is not None, f"{entry.id}: neither downloadable nor manual steps in the weights table"
    return entry.manual.replace("<models>", str(target))


# ------------------------------------------------------------------------------------------------ the lookup


@dataclass(frozen=True)
class SearchRoot:
    """One place weights are looked for: `kind` is models / comfyui / seed; `flag`: the option that named it."""

    kind: str
    label: str
    path: Path
    flag: str | None = None


@dataclass
class Look:
    """What one place held for an entry."""

    label: str
    path: Path
    outcome: str


@dataclass
class FoundWeights:
    """The lookup's answer for one entry. `status`: found, missing, ambiguous (several candidates in the first
    place that had any) or invalid (the place is there but unusable, e.g. no adapter_config.json)."""

    entry: WeightsEntry
    status: str
    path: Path | None = None
    label: str | None = None
    looked: list[Look] = field(default_factory=list)
    message: str | None = None
    notes: list[str] = field(default_factory=list)
    models_dir: Path | None = None  # the --models-dir asked for: where the fix command downloads to
    root: SearchRoot | None = None  # where it was found: a models folder, a ComfyUI install, a CKPT_PTH folder

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def found(self) -> bool:
        return self.status == "found"

    @property
    def elsewhere(self) -> bool:
        """Found, but not in the first place looked (a run says where it took the file from)."""
        return self.found and len(self.looked) > 1

    def error(self) -> str:
        """One line for a face: what is missing (or unusable), the place looked in first, and the fix."""
        entry = self.entry
        if self.status != "missing":
            return f"{entry.what}: {self.message}"
        first = self.looked[0] if self.looked else Look("", Path(entry.subdir), "not looked for")
        named = [look for look in self.looked[1:] if "(--" in look.label]  # places a flag of this command named
        others = len(self.looked) - 1 - len(named)
        where = (f"{entry.what} not found: nothing usable in {first.path} ({first.outcome})"
                 + "".join(f", nor in {look.path} ({look.outcome}; {look.label})" for look in named)
                 + (f" nor in the {others} other places `rsvl weights list` names" if others > 0 else ""))
        skip = f", or {entry.skip}" if entry.skip else ""
        get = (f"to download it: {fix_command(entry, self.models_dir)}" if entry.downloadable
               else f"to get it: rsvl weights download {entry.id} (prints the steps)")
        return (f"{where}. Put {entry.put} there, pass {entry.flag} PATH, or point --models-dir / ${MODELS_DIR_ENV} "
                f"at a folder with a {entry.subdir}/ subfolder{skip}. To try the install without weights: rsvl demo; "
                f"{get}")

    def require(self, notify: Callable[[str], None] | None = None) -> Path:
        """The path, or WeightsNotFoundError with `error()`; `notify` hears where a file found elsewhere came from."""
        if not self.found:
            raise WeightsNotFoundError(self.error())
        if notify is not None and self.elsewhere:
            notify(f"{self.id}: using {self.path} ({self.label})")
        assert self.path is not None
        return self.path

    def optional(self, notify: Callable[[str], None] | None = None) -> Path | None:
        """Like `require`, but None when the item is simply absent (an unusable one is still an error)."""
        return None if self.status == "missing" else self.require(notify)


def _seed_folder(path: Path) -> Path:
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
            roots.append(SearchRoot("models", label, absolute(value), label if label.startswith("--") else None))
            models.append(absolute(value))
    for label, value in (("--comfyui-dir", comfyui_dir), (f"${COMFYUI_DIR_ENV}", env.get(COMFYUI_DIR_ENV) or None)):
        if value is not None:
            roots.append(SearchRoot("comfyui", f"ComfyUI ({label})", absolute(value),
                                    label if label.startswith("--") else None))
    if ckpt_dir is not None:
        roots.append(SearchRoot("seed", "seed CKPT_PTH (--ckpt-pth)", _seed_folder(absolute(ckpt_dir)), "--ckpt-pth"))
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


# What one place held: (status, path, outcome text, notes); status is found / missing / ambiguous / invalid.
Outcome = tuple[str, "Path | None", str, list]


def _pick(entry: WeightsEntry, found: list[Path], none: str, shared: bool = False) -> Outcome:
    """The one candidate; in a shared folder, the one matching `entry.prefer` among several (with a note)."""
    if shared and len(found) > 1:
        preferred = [p for p in found if any(fnmatch.fnmatch(p.name.lower(), pat) for pat in entry.prefer)]
        if len(preferred) == 1:
            others = ", ".join(p.name for p in found if p != preferred[0])
            return "found", preferred[0], "found", [f"also there: {others} (use it with {entry.flag} PATH)"]
    if len(found) == 1:
        return "found", found[0], "found", []
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        return "ambiguous", None, f"several candidates ({names}); choose one with {entry.flag} PATH", []
    return "missing", None, none, []


def _in_models_folder(entry: WeightsEntry, folder: Path) -> Outcome:
    """`<root>/<subdir>`: a folder item is the folder or its one model sub-folder; a file item is the one weights
    file (or folder form) in it."""
    if not folder.is_dir():
        return "missing", None, "no such folder", []
    if entry.marker:  # the folder itself, or (as ComfyUI's nodes list them) its one model sub-folder
        if entry.holds(folder):
            return "found", folder, "found", []
        models = sorted(p for p in folder.iterdir() if p.is_dir() and entry.holds(p))
        if models:
            return _pick(entry, models, "")
        if not entry.required:  # an optional item's broken folder is reported, not silently skipped
            return "invalid", None, f"folder has no {entry.marker} (remove it or put {entry.put} there)", []
        return "missing", None, f"no {entry.marker}", []
    if entry.folder_form and entry.holds(folder):
        return "found", folder, "found (diffusers folder)", []
    forms = sorted(p for p in folder.iterdir() if p.is_dir() and entry.holds(p)) if entry.folder_form else []
    suffixes = "/".join(s for s in (".safetensors", ".pth", ".ckpt") if s in entry.extensions)
    candidates = entry.files_in(folder) + forms
    posing = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in entry.extensions
                    and not p.name.startswith(".") and p not in candidates)
    if not candidates and posing:  # a folder (or a broken link) named like a weights file: say so, not "not found"
        return "invalid", None, (f"{posing[0]} is named like a weights file but is a folder or a broken link; put "
                                 f"{entry.put} there as a file, or pass {entry.flag} PATH"), []
    return _pick(entry, candidates, f"no {suffixes} file")


def _in_comfy_checkpoints(entry: WeightsEntry, folder: Path) -> Outcome:
    """ComfyUI's shared models/checkpoints/: only files named like the entry's patterns."""
    if not folder.is_dir():
        return "missing", None, "no such folder", []
    found = [p for p in entry.files_in(folder)
             if any(fnmatch.fnmatch(p.name.lower(), pat) for pat in entry.comfy_checkpoints)]
    return _pick(entry, found, f"no file named like {' / '.join(entry.comfy_checkpoints)}", shared=True)


def _in_seed_release(entry: WeightsEntry, folder: Path) -> Outcome:
    """The seed's CKPT_PTH/ folder, as `entry.seed` describes the item's place in it."""
    if not folder.is_dir():
        return "missing", None, "no such folder", []
    seed = entry.seed
    if seed is None:
        return "missing", None, entry.seed_absent or "not in the seed's release", []
    if seed.folder:
        item = folder / seed.folder
        if not item.exists():
            return "missing", None, f"no {seed.folder}/ folder", []
        if entry.holds(item):
            return "found", item, "found", []
        return "invalid", None, f"{seed.folder}/ has no {entry.marker}", []
    if seed.names:
        by_name = {p.name.lower(): p for p in entry.files_in(folder)}
        found = [by_name[n.lower()] for n in seed.names if n.lower() in by_name]
        return _pick(entry, found, f"no {' / '.join(seed.names)}", shared=True)
    items = [folder / e.seed.folder for e in WEIGHTS.values() if e.seed is not None and e.seed.folder]
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and not any(item in p.parents for item in items))
    found = [p for p in files if any(fnmatch.fnmatch(p.name.lower(), pat) for pat in seed.patterns)]
    return _pick(entry, found, f"no {' / '.join(seed.patterns)} file under it", shared=True)


def _explicit(entry: WeightsEntry, path: Path, models_dir: Path | None) -> FoundWeights:
    path = Path(path)
    if entry.holds(path):
        return FoundWeights(entry, "found", path, entry.flag, [Look(entry.flag, path, "found")], models_dir=models_dir)
    if entry.marker:
        problem = f"no {entry.marker}" if path.is_dir() else "no such folder"
    elif entry.folder_form:
        problem = "neither a file nor a diffusers SDXL folder (unet/, vae/, text_encoder/, text_encoder_2/)"
    else:
        problem = "does not exist" if not path.exists() else "is not a file"
    return FoundWeights(entry, "invalid", None, None, [Look(entry.flag, path, problem)],
                        f"{entry.flag} {path}: {problem} (expected {entry.accepts})", models_dir=models_dir)


def check_search_folders(models_dir: Path | None = None, comfyui_dir: Path | None = None,
                         ckpt_dir: Path | None = None, missing_ok: bool = False) -> None:
    """A folder a flag names must be a folder (a typo must not fall back to $RSVL_MODELS_DIR or ./models, nor a
    file be read as an empty folder): RsvlError naming the flag, what it should hold and what to do. `missing_ok`:
    a folder not made yet passes (the lookup records "no such folder"; `rsvl weights list` prints the fix into it)."""
    holds = {"--models-dir": f"a models folder with {', '.join(f'{e.subdir}/' for e in WEIGHTS.values())} subfolders",
             "--comfyui-dir": "a ComfyUI install (its models/ folder: rsvl/, checkpoints/, upscale_models/)",
             "--ckpt-pth": f"the seed's unzipped {SEED_CKPT_DIR} folder (or the folder holding it)"}
    for flag, value in (("--models-dir", models_dir), ("--comfyui-dir", comfyui_dir), ("--ckpt-pth", ckpt_dir)):
        if value is None or Path(value).expanduser().is_dir():
            continue
        path = Path(value)
        if path.exists() or path.is_symlink():
            what = "is a file, not a folder" if path.is_file() else "is not a folder (a broken link?)"
            single = " (a single weights file goes to --sr3 / --sdxl / --supir)" if path.is_file() else ""
            raise RsvlError(f"{flag} {path}: {what}; name {holds[flag]}{single}")
        if missing_ok:
            continue
        raise RsvlError(f"{flag} {path}: no such folder; expected {holds[flag]} (check the path, or leave the "
                        "flag out to search the default places)")
    if comfyui_dir is not None and Path(comfyui_dir).expanduser().is_dir() \
            and not (Path(comfyui_dir).expanduser() / "models").is_dir():
        raise RsvlError(f"--comfyui-dir {comfyui_dir}: has no models/ folder; expected {holds['--comfyui-dir']}")


def find_weights(item: str, *, explicit: Path | None = None, models_dir: Path | None = None,
                 comfyui_dir: Path | None = None, ckpt_dir: Path | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> FoundWeights:
    """Look for one table entry in the documented order; every place looked in is recorded in the answer."""
    entry = weights_entry(item)
    check_search_folders(models_dir, comfyui_dir, ckpt_dir, missing_ok=True)
    if explicit is not None:
        return _explicit(entry, explicit, models_dir)
    looked: list[Look] = []
    for root in search_roots(models_dir, comfyui_dir, ckpt_dir, env, cwd):
        if root.kind == "models":
            places = [(root.path / entry.subdir, _in_models_folder)]
        elif root.kind == "comfyui":
            places = [(root.path / "models" / "rsvl" / entry.subdir, _in_models_folder)]
            if entry.comfy_checkpoints:
                places.append((root.path / "models" / "checkpoints", _in_comfy_checkpoints))
            places += [(root.path / "models" / sub, _in_models_folder) for sub in entry.comfy_models]
        else:
            places = [(root.path, _in_seed_release)]
        for folder, look_in in places:
            status, path, outcome, notes = look_in(entry, folder)
            looked.append(Look(root.label, folder, outcome))
            if status == "missing":
                continue
            message = None if status == "found" else f"{folder}: {outcome}"
            return FoundWeights(entry, status, path, root.label, looked, message, notes, models_dir, root)
    return FoundWeights(entry, "missing", None, None, looked, models_dir=models_dir)
