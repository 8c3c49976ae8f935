"""The weights each stage needs: what they are, where they are found, whether they are sound, and how to get them.

`list_weights` finds every stage's weights (the search order is `rsvl_core.weights.find_weights`'),
`check_weights` checks the found files (size, header, sha256 against a published hash where one is known),
`download_weights` fetches a downloadable stage from the Hugging Face Hub. Nothing here downloads unless
`download_weights` is called, and only `rsvl weights download` calls it.

Published hashes: only where the Hub's LFS pointer states them (see each `KnownFile.source`). Where no hash is
published, `check --sha256` computes and prints the file's hash and says there is nothing to compare it with.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import pickle_problem
from .errors import RsvlError
from .progress import ProgressCallback, report
from .weights import (
    STAGE_FLAGS,
    STAGE_SUBDIRS,
    STAGES,
    WEIGHT_SUFFIXES,
    FoundWeights,
    Look,
    default_models_dir,
    find_weights,
    weight_files,
)

SEED_ZIP_URL = "https://drive.google.com/file/d/1OJ2wi75Ivdwtp8TjncQGpXjDqdwxVpL3/view?usp=sharing"
PIP_HINT = 'pip install "huggingface_hub>=0.23"   (or: pip install "rsvl[download]")'
HASH_CHUNK = 8 * 1024 * 1024
DOWNLOAD_TMP = ".rsvl-download"  # beside the destination; an interrupted download resumes from it


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
        return name.lower() in {n.lower() for n in (self.name, *self.aliases)}


@dataclass(frozen=True)
class HubSource:
    """Where a downloadable stage comes from: a single file (`filename`) or a whole repo (snapshot)."""

    repo_id: str
    filename: str | None = None
    allow_patterns: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


@dataclass(frozen=True)
class WeightSpec:
    stage: str
    title: str
    kind: str  # "file" or "folder"
    required: bool
    needed_for: str
    accepts: str  # accepted names / layout, for people
    hub: HubSource | None = None
    variants: Mapping[str, HubSource] = field(default_factory=dict)  # e.g. SUPIR v0Q / v0F
    manual: str | None = None  # how to get it when it is not downloadable
    known: tuple[KnownFile, ...] = ()

    @property
    def subdir(self) -> str:
        return STAGE_SUBDIRS[self.stage]

    @property
    def flag(self) -> str:
        return STAGE_FLAGS[self.stage]

    @property
    def downloadable(self) -> bool:
        return self.hub is not None or bool(self.variants)


def _seed_zip_steps(what: str) -> str:
    return (f"only in the seed's release: download pretrained_model.zip from {SEED_ZIP_URL} (a browser, or "
            f"`pip install gdown && gdown 1OJ2wi75Ivdwtp8TjncQGpXjDqdwxVpL3`), unzip it, and {what}; "
            f"or point --ckpt-pth at the unzipped CKPT_PTH folder")


SUPIR_V0Q = HubSource("camenduru/SUPIR", "SUPIR-v0Q.ckpt")
SUPIR_V0F = HubSource("camenduru/SUPIR", "SUPIR-v0F.ckpt")

CATALOGUE: dict[str, WeightSpec] = {spec.stage: spec for spec in (
    WeightSpec(
        "sr3", "SR3 generator (stage 1, 8x, trained 28->224 on AID)", "file", True, "stage 1",
        "any *.pth / *.ckpt / *.safetensors (the seed's I<iter>_E<epoch>_gen.pth)",
        manual=_seed_zip_steps("copy the *_gen.pth file found under CKPT_PTH/ into <models>/sr3/"),
    ),
    WeightSpec(
        "captioner", "LLaVA-NeXT (Llama-3 8B) captioner, Hugging Face layout", "folder", True,
        "caption (unless --caption/--stage1-only)",
        "a Hugging Face model folder: config.json, model*.safetensors, tokenizer and processor files",
        hub=HubSource("llava-hf/llama3-llava-next-8b-hf",
                      allow_patterns=("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model")),
    ),
    WeightSpec(
        "caption-adapter", "the seed's LoRA adapter for the captioner", "folder", False,
        "caption (optional: the seed's tuning)",
        "a PEFT folder: adapter_config.json + adapter_model.safetensors (or .bin), maybe non_lora_trainables.bin",
        manual=_seed_zip_steps("copy the folder CKPT_PTH/Llava-next/ to <models>/llava_adapter/"),
    ),
    WeightSpec(
        "sdxl", "SDXL base: Juggernaut XL v8 + RunDiffusion (single file)", "file", True,
        "refiner (unless --stage1-only)",
        "one *.safetensors / *.ckpt SDXL single file (the seed's juggernautXL_v8Rundiffusion.safetensors), "
        "or a diffusers SDXL folder",
        hub=HubSource("RunDiffusion/Juggernaut-XL-v8", "juggernautXL_v8Rundiffusion.safetensors"),
        known=(KnownFile(
            "juggernautXL_v8Rundiffusion.safetensors", 7105348592,
            "aeb7e9e6897a1e58b10494bd989d001e3d4bc9b634633cd7b559838f612c2867",
            "LFS pointers of Hub mirrors of the Civitai v8 release (model 133005, version 288982), e.g. "
            "frankjoshua/juggernautXL_v8Rundiffusion, metercai/SimpleSDXL; RunDiffusion/Juggernaut-XL-v8's copy "
            "was not checked",
            strict=False),),
    ),
    WeightSpec(
        "supir", "SUPIR checkpoint (v0Q, the seed's default; v0F also released)", "file", True,
        "refiner (unless --stage1-only)",
        "one *.ckpt / *.safetensors: SUPIR-v0Q.ckpt or SUPIR-v0F.ckpt (the seed names them v0Q.ckpt / v0F.ckpt)",
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
assert tuple(CATALOGUE) == STAGES


def spec_for(stage: str) -> WeightSpec:
    if stage not in CATALOGUE:
        raise RsvlError(f"unknown weights stage {stage!r}; one of {', '.join(STAGES)}")
    return CATALOGUE[stage]


# ---------------------------------------------------------------------------------------------- list


@dataclass
class WeightsRow:
    """One stage in `rsvl weights list`: where it was found (or not), where it was looked for, and the fix."""

    spec: WeightSpec
    result: FoundWeights
    fix: str | None

    @property
    def stage(self) -> str:
        return self.spec.stage

    @property
    def required(self) -> bool:
        return self.spec.required

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def path(self) -> Path | None:
        return self.result.path

    @property
    def looked(self) -> list[Look]:
        return self.result.looked


def fix_command(spec: WeightSpec, models_dir: Path | None) -> str:
    """The exact command (or, for the seed-only files, the steps) that puts a missing item in place."""
    target = Path(models_dir) if models_dir is not None else default_models_dir()
    if spec.downloadable:
        return f"rsvl weights download {spec.stage} --models-dir {target}"
    assert spec.manual is not None
    return spec.manual.replace("<models>", str(target))


def list_weights(models_dir: Path | None = None, comfyui_dir: Path | None = None, ckpt_dir: Path | None = None,
                 explicit: Mapping[str, Path | None] | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, stages: tuple[str, ...] = STAGES) -> list[WeightsRow]:
    """Every stage's search result, with the fix for the ones missing (or ambiguous / unusable)."""
    explicit = explicit or {}
    rows = []
    for stage in stages:
        spec = spec_for(stage)
        result = find_weights(stage, explicit=explicit.get(stage), models_dir=models_dir, comfyui_dir=comfyui_dir,
                              ckpt_dir=ckpt_dir, env=env, cwd=cwd)
        fix = None
        if result.status == "missing":
            fix = fix_command(spec, models_dir)
        elif result.status in ("ambiguous", "invalid"):
            fix = result.message
        rows.append(WeightsRow(spec, result, fix))
    return rows


# --------------------------------------------------------------------------------------------- check


def sha256_file(path: Path, progress: ProgressCallback | None = None, chunk_size: int = HASH_CHUNK) -> str:
    """The file's sha256, read in chunks; `progress(done_bytes, total_bytes, "sha256 <name>")` after each."""
    path = Path(path)
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            done += len(chunk)
            report(progress, done, total, f"sha256 {path.name}")
    return digest.hexdigest()


def header_problem(path: Path) -> str | None:
    """A cheap structural check of one weights file; None if it looks sound, else what is wrong."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "file is empty"
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if suffix in (".safetensors", ".sft"):
                if len(head) < 8:
                    return "too short for a safetensors file"
                (header_len,) = struct.unpack("<Q", head)
                if header_len > min(size - 8, 100 * 1024 * 1024):
                    return "not a safetensors file (header length out of range)"
                header = json.loads(handle.read(header_len))
                if not isinstance(header, dict):
                    return "safetensors header is not a JSON object"
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
                if 8 + header_len + end != size:
                    return (f"safetensors size mismatch: the header describes {8 + header_len + end} bytes, "
                            f"the file has {size} (truncated or damaged download)")
                return None
        if suffix in (".pth", ".pt", ".ckpt", ".bin"):
            if head[:1] != b"\x80" and not zipfile.is_zipfile(path):
                return "not a PyTorch checkpoint (neither a zip archive nor a pickle; truncated download?)"
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    if not any(name.endswith("data.pkl") for name in archive.namelist()):
                        return "zip archive without data.pkl: not a torch.save checkpoint"
            return pickle_problem(path)  # the loader's own safe reader: what loading refuses, check refuses
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as exc:
        return f"unreadable: {exc}"
    return None


def _folder_files(spec: WeightSpec, folder: Path) -> tuple[list[Path], list[str]]:
    """The weights files of a folder item, and the problems of its layout."""
    problems: list[str] = []
    marker = "adapter_config.json" if spec.stage == "caption-adapter" else "config.json"
    if spec.stage == "sdxl":  # a diffusers SDXL folder
        configs = [folder / sub / "config.json" for sub in ("unet", "vae", "text_encoder", "text_encoder_2")]
    else:
        configs = [folder / marker]
    for config in configs:
        if not config.is_file():
            problems.append(f"{config.relative_to(folder)} missing")
            continue
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{config.relative_to(folder)} is not valid JSON ({exc})")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (*WEIGHT_SUFFIXES, ".bin")
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        problems.append("no weights file (*.safetensors / *.bin) in the folder")
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            problems.append(f"{index.name} is not a valid index ({exc})")
            continue
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            problems.append(f"{index.name} names missing shard(s): {', '.join(missing)}")
    return files, problems


@dataclass
class FileCheck:
    path: Path
    size: int
    problem: str | None = None
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    """`check_weights`' verdict on one stage: ok when found and every file is sound (and matches a strict hash)."""

    spec: WeightSpec
    row: WeightsRow
    files: list[FileCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.spec.stage

    @property
    def ok(self) -> bool:
        return self.row.status == "found" and not self.problems and not any(f.problem for f in self.files)


def _compare_known(spec: WeightSpec, item: FileCheck) -> None:
    """Size and (when computed) sha256 against the stage's published files: by name, else by hash."""
    by_name = [k for k in spec.known if k.matches_name(item.path.name)]
    if item.sha256 is not None:
        by_hash = [k for k in spec.known if k.sha256 == item.sha256]
        if by_hash:
            item.notes.append(f"sha256 matches the published {by_hash[0].name} ({by_hash[0].source})")
            return
    for known in by_name:
        if known.size is not None and item.size != known.size:
            text = (f"size {item.size} bytes, the published {known.name} has {known.size} "
                    f"(incomplete download or a different file)")
            if known.strict:
                item.problem = item.problem or text
            else:
                item.notes.append(text + f"; {known.source}")
        if item.sha256 is not None and known.sha256 is not None:
            text = f"sha256 {item.sha256} differs from the published {known.sha256} ({known.source})"
            if known.strict:
                item.problem = item.problem or text
            else:
                item.notes.append(text + ": may be another upload of the same model")
        return
    if item.sha256 is not None:
        item.notes.append(f"sha256 {item.sha256}: no published hash to compare with")


def check_weights(rows: list[WeightsRow] | None = None, *, sha256: bool = False,
                  progress: ProgressCallback | None = None, **search) -> list[CheckResult]:
    """Check every found item: readable, non-empty, a sane header (safetensors header parses and matches the file
    size, a torch checkpoint is a zip with data.pkl, a model folder has valid config JSON and its shards), the
    published size, and with `sha256=True` the sha256 (streamed; `progress` gets the bytes hashed)."""
    rows = list_weights(**search) if rows is None else rows
    results = []
    for row in rows:
        result = CheckResult(row.spec, row)
        results.append(result)
        if row.status != "found":
            if row.status == "missing" and not row.required:
                result.notes.append("optional, not present")
            elif row.status == "missing":
                result.problems.append("not found")
            else:
                result.problems.append(row.result.message or row.status)
            continue
        path = Path(row.path)
        if path.is_dir():
            files, problems = _folder_files(row.spec, path)
            result.problems.extend(problems)
        else:
            files = [path]
        for file in files:
            try:
                size = file.stat().st_size
                with open(file, "rb") as handle:
                    handle.read(1)
            except OSError as exc:
                result.files.append(FileCheck(file, 0, f"not readable: {exc}"))
                continue
            item = FileCheck(file, size, header_problem(file))
            if sha256 and item.problem is None:
                item.sha256 = sha256_file(file, progress)
            if not path.is_dir():
                _compare_known(row.spec, item)
            elif item.sha256 is not None:
                item.notes.append(f"sha256 {item.sha256}")
            result.files.append(item)
        if sha256 and path.is_dir():
            result.notes.append("no published hashes for this folder's files")
    return results


# ------------------------------------------------------------------------------------------ download


def import_hub():
    """huggingface_hub, imported only when a download is asked for; a clear error with the pip command if absent."""
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError:
        raise RsvlError(f"downloading needs the huggingface_hub package, which is not installed: {PIP_HINT}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass
class Download:
    stage: str
    path: Path | None  # where it now is; None for the manual ones
    status: str  # "downloaded", "present", "manual"
    message: str


def download_destination(stage: str, models_dir: Path | None = None, variant: str | None = None) -> Path:
    spec = spec_for(stage)
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    source = _hub_source(spec, variant)
    if source is None or source.filename is None:
        return root / spec.subdir
    return root / spec.subdir / Path(source.filename).name


def _hub_source(spec: WeightSpec, variant: str | None) -> HubSource | None:
    if variant is None:
        return spec.hub
    if variant not in spec.variants:
        choices = ", ".join(spec.variants) or "none"
        raise RsvlError(f"{spec.stage} has no variant {variant!r} (variants: {choices})")
    return spec.variants[variant]


def download_weights(stage: str, models_dir: Path | None = None, *, variant: str | None = None,
                     force: bool = False, hub=None, token: str | None = None,
                     progress: ProgressCallback | None = None) -> Download:
    """Fetch one stage into `<models_dir>/<subdir>/` from the Hugging Face Hub (never called implicitly).

    The file (or, for the captioner, the repo snapshot) is downloaded into a hidden folder beside the destination
    (`.rsvl-download/`, where an interrupted download resumes) and renamed into place only when complete; a
    published size / sha256 is verified before the rename. Seed-only stages return their manual instructions.
    `hub` replaces the huggingface_hub module (tests).
    """
    spec = spec_for(stage)
    source = _hub_source(spec, variant)
    if source is None:
        return Download(stage, None, "manual", fix_command(spec, models_dir))
    dest = download_destination(stage, models_dir, variant)
    present = dest.is_file() if source.filename else (dest / "config.json").is_file()
    if present and not force:
        return Download(stage, dest, "present", f"{dest} already exists (--force downloads it again)")
    if source.filename:
        others = [p for p in weight_files(dest.parent) if p.name != dest.name]
        if others:
            raise RsvlError(f"{dest.parent} already holds {', '.join(p.name for p in others)}; the {stage} folder "
                            f"takes one file: remove it first, or download into another --models-dir")
    hub = import_hub() if hub is None else hub
    staging = dest.parent / DOWNLOAD_TMP / (source.filename or spec.subdir).replace("/", "_")
    staging.mkdir(parents=True, exist_ok=True)
    what = f"{source.repo_id}" + (f"/{source.filename}" if source.filename else "")
    try:
        if source.filename:
            got = Path(hub.hf_hub_download(repo_id=source.repo_id, filename=source.filename, local_dir=str(staging),
                                           token=token))
        else:
            got = Path(hub.snapshot_download(repo_id=source.repo_id, local_dir=str(staging), token=token,
                                             allow_patterns=list(source.allow_patterns) or None))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # network, auth, missing repo: one line, and how to do it by hand
        raise RsvlError(f"download of {what} failed ({_one_line(exc)}). Check the internet connection (or HF_TOKEN "
                        f"/ HF_ENDPOINT), then run the command again to resume, or download it by hand from "
                        f"{source.url} into {dest}") from None
    if source.filename:
        _verify_download(spec, got, source.filename, progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, dest)
    else:
        shutil.rmtree(got / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
        if not (got / "config.json").is_file():
            raise RsvlError(f"download of {what} has no config.json: not a model folder (left in {got})")
        old = dest.parent / DOWNLOAD_TMP / f"{spec.subdir}.old"
        if dest.exists():  # --force: the old folder is moved aside, the new one renamed in, then the old removed
            os.replace(dest, old)
        os.replace(got, dest)
    shutil.rmtree(dest.parent / DOWNLOAD_TMP, ignore_errors=True)
    return Download(stage, dest, "downloaded", f"downloaded {what} -> {dest}")


def _verify_download(spec: WeightSpec, path: Path, name: str, progress: ProgressCallback | None) -> None:
    for known in spec.known:
        if not (known.matches_name(name) and known.strict):
            continue
        size = path.stat().st_size
        if known.size is not None and size != known.size:
            path.unlink()
            raise RsvlError(f"downloaded {name} has {size} bytes, the published file {known.size}: deleted; "
                            f"run the command again")
        if known.sha256 is not None:
            digest = sha256_file(path, progress)
            if digest != known.sha256:
                path.unlink()
                raise RsvlError(f"downloaded {name} has sha256 {digest}, the published one is {known.sha256}: "
                                f"deleted; run the command again")


def hash_cache_path() -> Path:
    """Where computed sha256 sums are remembered: $XDG_CACHE_HOME/rsvl (default ~/.cache/rsvl)/sha256.json."""
    import os

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "rsvl" / "sha256.json"


def cached_sha256(path: Path, progress: ProgressCallback | None = None) -> str:
    """sha256 of a file, computed once per (path, size, mtime) and remembered in `hash_cache_path()`."""
    import json

    from .atomic import atomic_path

    path = Path(path).resolve()
    stat = path.stat()
    cache_file = hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(str(path))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    digest = sha256_file(path, progress)
    cache[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    except OSError:
        pass  # a read-only cache folder only costs recomputing next time
    return digest
