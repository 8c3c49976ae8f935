"""What every entry of the weights table needs: where it was found, whether it is sound, and how to get it.

`list_weights` looks up every entry of `rsvl_core.weights.catalogue.WEIGHTS` with the one lookup (`find_weights`),
`check_weights` checks the found files (size, header, sha256 against a published hash where one is known),
`download_weights` fetches a downloadable entry from the Hugging Face Hub. Nothing here downloads unless
`download_weights` is called, and only `rsvl weights download` calls it.

Published hashes: only where the Hub's LFS pointer states them (see each `KnownFile.source` in the table). Where no
hash is published, `check --sha256` computes and prints the file's hash and says there is nothing to compare it with.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..kit.errors import RsvlError
from ..kit.progress import ProgressCallback, report
from .catalogue import (
    WEIGHTS,
    FoundWeights,
    HubSource,
    Look,
    WeightsEntry,
    default_models_dir,
    find_weights,
    fix_command,
    weight_files,
    weights_entry,
)
from .checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, pickle_problem, safetensors_header

PIP_HINT = 'pip install "huggingface_hub>=0.23"   (or: pip install "rsvl[download]")'
HASH_CHUNK = 8 * 1024 * 1024
LoadCheck = Callable[[Mapping[str, Path]], Mapping[str, str]]  # weights id -> path  =>  id -> why it will not load
DOWNLOAD_TMP = ".rsvl-download"  # beside the destination; an interrupted download resumes from it


# ---------------------------------------------------------------------------------------------- list


@dataclass
class WeightsRow:
    """One table entry in `rsvl weights list`: where it was found (or not), where it was looked for, and the fix."""

    entry: WeightsEntry
    result: FoundWeights
    fix: str | None

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def required(self) -> bool:
        return self.entry.required

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def path(self) -> Path | None:
        return self.result.path

    @property
    def looked(self) -> list[Look]:
        return self.result.looked


def list_weights(models_dir: Path | None = None, comfyui_dir: Path | None = None, ckpt_dir: Path | None = None,
                 explicit: Mapping[str, Path | None] | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, items: tuple[str, ...] | None = None) -> list[WeightsRow]:
    """The lookup's answer for every table entry (or `items`), with the fix for the ones missing or unusable."""
    explicit = explicit or {}
    rows = []
    for item in (tuple(WEIGHTS) if items is None else items):
        entry = weights_entry(item)
        result = find_weights(item, explicit=explicit.get(item), models_dir=models_dir, comfyui_dir=comfyui_dir,
                              ckpt_dir=ckpt_dir, env=env, cwd=cwd)
        fix = None
        if result.status == "missing":
            fix = fix_command(entry, models_dir)
        elif result.status in ("ambiguous", "invalid"):
            fix = result.message
        rows.append(WeightsRow(entry, result, fix))
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
            if suffix in SAFETENSORS_SUFFIXES:
                header_len, header = safetensors_header(path)
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
                if 8 + header_len + end != size:
                    return (f"safetensors size mismatch: the header describes {8 + header_len + end} bytes, "
                            f"the file has {size} (truncated or damaged download)")
                return None
        if suffix in PICKLE_SUFFIXES:
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


def _folder_files(entry: WeightsEntry, folder: Path) -> tuple[list[Path], list[str]]:
    """The weights files of a folder item, and the problems of its layout (the table's config JSONs)."""
    problems: list[str] = []
    configs = [folder / name for name in (entry.configs or ((entry.marker,) if entry.marker else ()))]
    for config in configs:
        if not config.is_file():
            problems.append(f"{config.relative_to(folder)} missing")
            continue
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{config.relative_to(folder)} is not valid JSON ({exc})")
    suffixes = (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
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
    """`check_weights`' verdict on one entry: ok when found and every file is sound (and matches a strict hash)."""

    entry: WeightsEntry
    row: WeightsRow
    files: list[FileCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def ok(self) -> bool:
        return self.row.status == "found" and not self.problems and not any(f.problem for f in self.files)


def _compare_known(entry: WeightsEntry, item: FileCheck) -> None:
    """Size and (when computed) sha256 against the entry's published files: by name, else by hash."""
    by_name = [k for k in entry.known if k.matches_name(item.path.name)]
    if item.sha256 is not None:
        by_hash = [k for k in entry.known if k.sha256 == item.sha256]
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
                  progress: ProgressCallback | None = None, load_check: LoadCheck | None = None,
                  **search) -> list[CheckResult]:
    """Check every found item: readable, non-empty, a sane header (safetensors header parses and matches the file
    size, a torch checkpoint is a zip with data.pkl, a model folder has valid config JSON and its shards), the
    published size, and with `sha256=True` the sha256 (streamed; `progress` gets the bytes hashed).

    `load_check` (the pipeline's `load_problems`, passed in by `rsvl weights check`: this module sits below the
    pipeline) probes whether the sound files will load; without it the loading is not checked."""
    rows = list_weights(**search) if rows is None else rows
    results = []
    for row in rows:
        result = CheckResult(row.entry, row)
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
            files, problems = _folder_files(row.entry, path)
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
                _compare_known(row.entry, item)
            elif item.sha256 is not None:
                item.notes.append(f"sha256 {item.sha256}")
            result.files.append(item)
        if sha256 and path.is_dir():
            result.notes.append("no published hashes for this folder's files")
    if load_check is not None:
        _check_loading(results, load_check)
    return results


def _check_loading(results: list[CheckResult], load_check: LoadCheck) -> None:
    """"ok" means "will load": the sound files go through their stage's own loader, on meta tensors (headers only:
    names, shapes, dtypes against the architecture), and a refusal becomes the entry's problem, in the loader's
    own words. A refiner file is only probed when both of its files (SDXL, SUPIR) are present."""
    sound = {r.id: Path(r.row.path) for r in results if r.ok}
    problems = load_check(sound)
    for result in results:
        if (problem := problems.get(result.id)) is not None:
            result.problems.append(f"will not load: {problem}")
        elif result.id in ("sdxl", "supir") and result.ok and not {"sdxl", "supir"} <= set(sound):
            result.notes.append("loading not checked: the refiner needs both its SDXL and SUPIR files")


# ------------------------------------------------------------------------------------------ download


def import_hub():
    """huggingface_hub, imported only when a download is asked for; a clear error with the pip command if absent."""
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError:
        raise RsvlError(f"downloading needs the huggingface_hub package, which is not installed: {PIP_HINT}") from None


def _error_summary(exc: BaseException) -> str:
    """`Type: first line` of an exception, for one-line download errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass
class Download:
    """What `download_weights` did for one entry."""

    item: str
    path: Path | None  # where it now is; None for the manual ones
    status: str  # "downloaded", "present", "manual"
    message: str


def download_destination(item: str, models_dir: Path | None = None, variant: str | None = None) -> Path:
    entry = weights_entry(item)
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    source = _hub_source(entry, variant)
    if source is None or source.filename is None:
        return root / entry.subdir
    return root / entry.subdir / Path(source.filename).name


def _hub_source(entry: WeightsEntry, variant: str | None) -> HubSource | None:
    if variant is None:
        return entry.hub
    if variant not in entry.variants:
        choices = ", ".join(entry.variants) or "none"
        raise RsvlError(f"{entry.id} has no variant {variant!r} (variants: {choices})")
    return entry.variants[variant]


def download_weights(item: str, models_dir: Path | None = None, *, variant: str | None = None,
                     force: bool = False, hub=None, token: str | None = None,
                     progress: ProgressCallback | None = None) -> Download:
    """Fetch one entry into `<models_dir>/<subdir>/` from the Hugging Face Hub (never called implicitly).

    The file (or, for the captioner, the repo snapshot) is downloaded into a hidden folder beside the destination
    (`.rsvl-download/`, where an interrupted download resumes) and renamed into place only when complete; a
    published size / sha256 is verified before the rename. Seed-only entries return their manual instructions.
    `hub` replaces the huggingface_hub module (tests).
    """
    entry = weights_entry(item)
    source = _hub_source(entry, variant)
    if source is None:
        return Download(item, None, "manual", fix_command(entry, models_dir))
    dest = download_destination(item, models_dir, variant)
    present = dest.is_file() if source.filename else entry.holds(dest)
    if present and not force:
        return Download(item, dest, "present", f"{dest} already exists (--force downloads it again)")
    if source.filename:
        others = [p for p in weight_files(dest.parent) if p.name != dest.name]
        if others:
            raise RsvlError(f"{dest.parent} already holds {', '.join(p.name for p in others)}; the {item} folder "
                            f"takes one file: remove it first, or download into another --models-dir")
    hub = import_hub() if hub is None else hub
    staging = dest.parent / DOWNLOAD_TMP / (source.filename or entry.subdir).replace("/", "_")
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
        raise RsvlError(f"download of {what} failed ({_error_summary(exc)}). Check the internet connection (or "
                        f"HF_TOKEN / HF_ENDPOINT), then run the command again to resume, or download it by hand from "
                        f"{source.url} into {dest}") from None
    if source.filename:
        _verify_download(entry, got, source.filename, progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, dest)
    else:
        shutil.rmtree(got / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
        if not (got / "config.json").is_file():
            raise RsvlError(f"download of {what} has no config.json: not a model folder (left in {got})")
        old = dest.parent / DOWNLOAD_TMP / f"{entry.subdir}.old"
        if dest.exists():  # --force: the old folder is moved aside, the new one renamed in, then the old removed
            os.replace(dest, old)
        os.replace(got, dest)
    shutil.rmtree(dest.parent / DOWNLOAD_TMP, ignore_errors=True)
    return Download(item, dest, "downloaded", f"downloaded {what} -> {dest}")


def _verify_download(entry: WeightsEntry, path: Path, name: str, progress: ProgressCallback | None) -> None:
    for known in entry.known:
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

    from ..kit.atomic import atomic_path

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
