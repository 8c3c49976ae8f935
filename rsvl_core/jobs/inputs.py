"""The job API's parts: input files and folders + a run configuration + models -> output files and run records.

Options (`JobOptions`, `SceneOptions`), the events protocol faces implement (`JobEvents`), input collection and
output naming (`plan_job`), completeness (resume), one scene through the pipeline whole or by windows, and run
records. The work-item flow every job runs (plan -> claim -> execute -> assemble: `rsvl upscale`, `rsvl batch`,
`rsvl caption`, `rsvl eval`) is in `work.py`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch

from ..caption import collapse_whitespace
from ..kit.atomic import atomic_path, check_output_folder, fit_name, remove_stale_temporaries
from ..kit.errors import RsvlError
from ..kit.image import IMAGE_SUFFIXES, list_images
from ..kit.progress import ProgressCallback
from ..kit.tiling import Tile
from ..pipeline.models import ModelFiles, PipelineModels
from ..pipeline.options import RunConfig
from ..pipeline.run import PipelineResult, peak_memory, run_pipeline
from ..scenes.sources import SceneSource, is_geotiff_input, open_scene, row_sink, write_whole
from ..scenes.windows import ArraySink, RowSink, WindowOptions, blend_windows, plan_windows
from ..weights.catalogue import check_search_folders, find_weights
from .spread_layer import SpreadCanvas, layer_notes, layer_owner, merge_window_records, write_layer


@dataclass(frozen=True)
class SceneOptions:
    """How inputs are read: GeoTIFF bands and stretch, and windows for large scenes."""

    bands: str | None = None
    stretch: str | None = None
    percentiles: str | None = None
    windows: WindowOptions = field(default_factory=WindowOptions)

    def __post_init__(self) -> None:
        self.windows.check()


def scene_options_from(values: dict[str, Any]) -> SceneOptions:
    """SceneOptions from plain values named as in `options.SCENE_SETTINGS` (None, "" or "auto" = the reader's own
    choice; absent = the row's default): what the command line's scene flags and the scene nodes give."""
    from ..pipeline.options import SCENE_SETTINGS

    given = {name: values.get(name, SCENE_SETTINGS[name].default) for name in SCENE_SETTINGS}
    text = {name: None if given[name] in (None, "", "auto") else str(given[name]).strip() or None
            for name in ("bands", "stretch", "percentiles")}
    windows = WindowOptions(int(given["window_size"] or 0), int(given["window_overlap"]), str(given["caption_per"]))
    return SceneOptions(text["bands"], text["stretch"], text["percentiles"], windows)


@dataclass(frozen=True)
class JobOptions:
    """Where outputs go and how: `overwrite` replaces finished outputs (default: skip them, i.e. resume)."""

    output_dir: Path
    overwrite: bool = False
    hash_models: bool = True  # sha256 of every model file in the run record (computed once per file, cached)
    scene: SceneOptions = field(default_factory=SceneOptions)
    cog: bool = False         # GeoTIFF outputs as Cloud-Optimised GeoTIFFs (rio-cogeo)
    recursive: bool = False   # folders: their subfolders too, outputs in the same subfolders of output_dir


@dataclass
class JobSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)   # complete already
    claimed: list[Path] = field(default_factory=list)   # being computed by another run (its claim is live)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stopped: str | None = None                          # why the run stopped early (the output storage failed)


class JobEvents:
    """What a face shows while a job runs. Every method is optional: the base does nothing (library use, tests,
    Ray actors), and a face overrides what it shows (`rsvl upscale`'s bars, `rsvl caption`'s, the batch table)."""

    def begin(self, sources: list[Path]) -> None:
        """The inputs of the job, in order."""

    def note(self, source: Path, text: str) -> None:
        """Something worth saying about an input (a conversion, a stale temp file removed)."""

    def skipped(self, source: Path, target: Path) -> None:
        """An output that is complete already, or being computed by another run."""

    def progress(self, source: Path) -> ProgressCallback | None:
        """The progress callback for an input's stages (None: no progress shown)."""
        return None

    def finished(self, source: Path, target: Path, record: dict, seconds: float) -> None:
        """An output and its run record are in place."""

    def failed(self, source: Path, message: str) -> None:
        """An input failed (one line naming it); the rest go on."""


def collect_inputs(items: Iterable[Path], recursive: bool = False) -> list[Path]:
    """Files named directly, plus the images inside named folders (and their subfolders with `recursive`), in
    order, without repeats."""
    return [source for source, _ in collect_sources(items, recursive)]


def collect_sources(items: Iterable[Path], recursive: bool = False) -> list[tuple[Path, Path]]:
    """(input file, its subfolder under the named folder: Path() for files named directly) for every input."""
    paths: list[tuple[Path, Path]] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            images = list_images(item, recursive)
            if not images:
                raise RsvlError(f"{item}: folder has no images ({', '.join(IMAGE_SUFFIXES)}){nested_hint(item)}")
            paths.extend((image, image.parent.relative_to(item)) for image in images)
        elif item.exists():
            paths.append((item, Path()))
        elif item.is_symlink():
            raise RsvlError(f"{item}: {broken_link(item)}")
        else:
            raise RsvlError(f"{item}: input not found")
    if not paths:
        raise RsvlError("no input given: name image files or folders (or --input_img / --image_dir)")
    unique: dict[Path, Path] = {}
    for source, subfolder in paths:
        unique.setdefault(source, subfolder)  # first mention of a file wins
    return list(unique.items())


def nested_hint(folder: Path) -> str:
    """What to add when a folder's images are all in subfolders (they are searched only with --recursive)."""
    inner = [sub for sub in folder.iterdir() if sub.is_dir() and not sub.name.startswith(".")]
    if inner and list_images(folder, recursive=True):
        return f"; its {len(inner)} subfolder(s) have images: add --recursive to process them"
    return ""


def broken_link(link: Path) -> str:
    """Why a symbolic link gives no file: a loop, or a target that is not there."""
    try:
        link.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symbolic link loop (the link leads back to itself)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
    return f"symbolic link to {os.readlink(link)}, which does not exist"


def broken_links(folder: Path, recursive: bool = False) -> list[Path]:
    """Links named like images in a folder that lead nowhere (a loop, a missing target): reported, never skipped
    silently."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_symlink() and not p.exists())


def output_path(output_dir: Path, source: Path, scale: int, suffix: str = ".png") -> Path:
    """`<stem>_x<scale><suffix>`, shortened (`~<hash>`) where it or its companions (`.json`, `_uncertainty`) would
    pass the file system's name limit."""
    return output_dir / fit_name(f"{source.stem}_x{scale}{suffix}", reserve=len("_uncertainty") + 1)


def locate_caption_files(models_dir: Path | None = None, captioner: Path | None = None, adapter: Path | None = None,
                         ckpt_dir: Path | None = None, notify: Callable[[str], None] | None = None,
                         with_adapter: bool = True, comfyui_dir: Path | None = None) -> tuple[Path, Path | None]:
    """The captioner's folder and its LoRA adapter (None when absent or not wanted), found by the one weights lookup:
    `rsvl caption` and a run's caption step find them in exactly the same places."""
    places = {"models_dir": models_dir, "ckpt_dir": ckpt_dir, "comfyui_dir": comfyui_dir}
    folder = find_weights("captioner", explicit=captioner, **places).require(notify)
    if not with_adapter:
        return folder, None
    lora = find_weights("caption-adapter", explicit=adapter, **places)
    return folder, lora.optional(notify)


def locate_model_files(config: RunConfig, models_dir: Path | None = None, stage1: Path | None = None,
                       sdxl: Path | None = None, supir: Path | None = None,
                       notify: Callable[[str], None] | None = None, captioner: Path | None = None,
                       adapter: Path | None = None, ckpt_dir: Path | None = None,
                       comfyui_dir: Path | None = None) -> ModelFiles:
    """Every file the run needs, found by the one weights lookup (`rsvl_core.weights.catalogue.find_weights`) before any
    heavy work; only the stages `config` uses. `notify` hears where a file found outside the first place came from.
    A `models_dir` the caller names must exist (a typo must not fall back to $RSVL_MODELS_DIR or ./models)."""
    check_search_folders(models_dir, comfyui_dir, ckpt_dir)

    def find(item: str, explicit: Path | None) -> Path:
        return find_weights(item, explicit=explicit, models_dir=models_dir, ckpt_dir=ckpt_dir,
                            comfyui_dir=comfyui_dir).require(notify)

    stage1_path = find("sr3", stage1)
    if config.refine is None:
        return ModelFiles(stage1_path)
    if config.caption_text is None:
        try:
            captioner, adapter = locate_caption_files(models_dir, captioner, adapter, ckpt_dir, notify,
                                                      comfyui_dir=comfyui_dir)
        except RsvlError as exc:
            raise RsvlError(f"{exc} (or pass --caption TEXT, or --stage1-only to skip captioning)") from None
    else:
        captioner = adapter = None
    return ModelFiles(stage1_path, captioner, adapter, find("sdxl", sdxl), find("supir", supir))


# Errors of the output storage that no later input can escape: stop the run instead of failing every image.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def plan_outputs(sources: list[Path], output_dir: Path, scale: int, geotiffs: list[bool],
                 subfolders: list[Path] | None = None) -> list[Path]:
    """Each input's output path. `<stem>_x<scale>.png` (`.tif` for GeoTIFFs), in the input's subfolder of
    `output_dir` for a folder searched recursively; inputs of the run that would share one name (`a.png` and
    `a.jpg`) each get their extension in it instead: `a_png_x2.png`, `a_jpg_x2.png`."""
    folders = [output_dir / sub for sub in subfolders] if subfolders else [output_dir] * len(sources)
    targets = [output_path(folder, source, scale, ".tif" if geotiff else ".png")
               for source, geotiff, folder in zip(sources, geotiffs, folders, strict=True)]
    shared = {t for t in targets if targets.count(t) > 1}
    for index, (source, target) in enumerate(zip(sources, targets, strict=True)):
        if target in shared:
            tagged = source.with_name(f"{source.stem}_{source.suffix.lstrip('.').lower() or 'noext'}")
            targets[index] = output_path(target.parent, tagged, scale, target.suffix)
    return targets


def is_complete(target: Path) -> bool:
    """An output is done only when its image and its run record are both there and the record names it."""
    sidecar = target.with_suffix(".json")
    try:  # (a name at the file system's limit has no room for `.json`: OSError, so not complete)
        if not (target.is_file() and sidecar.is_file()):
            return False
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("image") == printable(target.name)


def prepare_output_folder(folder: Path) -> list[Path]:
    """Before any model loads: the folder exists (or is made) and takes files; our stale temps are removed."""
    try:
        check_output_folder(folder)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RsvlError(f"output folder {folder}: cannot write there ({reason})") from None
    return remove_stale_temporaries(folder)


def plan_job(inputs: Iterable[Path], scale: int, options: JobOptions,
             events: JobEvents) -> list[tuple[Path, Path, bool]]:
    """(input, output, is GeoTIFF) for every input, after the output folder is checked and our stale temps
    are removed: the start every face of the job API shares. Earlier rsvl outputs among the inputs (an output
    folder that is also the input folder) are never inputs: they are left out, and that is said once."""
    inputs = [Path(item) for item in inputs]
    collected = collect_sources(inputs, options.recursive)
    for link in (link for item in inputs if item.is_dir() for link in broken_links(item, options.recursive)):
        events.note(link, f"{broken_link(link)}: skipped (remove the link or fix its target)")
    ours = [source for source, _ in collected if is_complete(source) or is_complete(layer_owner(source))]
    if ours:
        collected = [(source, sub) for source, sub in collected if source not in ours]
    sources = [source for source, _ in collected]
    if ours:
        events.note(ours[0], f"{len(ours)} input(s) are earlier rsvl outputs (a run record beside each names it) "
                             "and are not upscaled again: left out")
        if not sources:
            raise RsvlError(f"every input is an earlier rsvl output ({printable(ours[0].name)}, ...; each has its "
                            "run record beside it): name the original images")
    for stale in prepare_output_folder(options.output_dir):
        events.note(stale, "removed a temporary file left by an interrupted run")
    geotiffs = [is_geotiff(source, options.scene) for source in sources]
    targets = plan_outputs(sources, options.output_dir, scale, geotiffs, [sub for _, sub in collected])
    for folder in {target.parent for target in targets} - {options.output_dir}:
        folder.mkdir(parents=True, exist_ok=True)
    for source, target in zip(sources, targets, strict=True):
        if "~" in target.stem and not target.stem.startswith(source.stem):
            events.note(source, f"output named {printable(target.name)}: the full name passes the file system's "
                                "255-byte limit (the run record names the input)")
    return list(zip(sources, targets, geotiffs, strict=True))


def upscale_to(source: Path, target: Path, geotiff: bool, config: RunConfig, models: PipelineModels,
               options: JobOptions, model_files: dict, events: JobEvents) -> dict:
    """One input -> its output image and run record beside it (both, or neither); returns the record."""
    record = upscale_file(source, target, geotiff, config, models, options.scene, events, options.cog)
    write_record_or_remove(target, record, config, models.device, model_files)
    return record


def write_record_or_remove(target: Path, record: dict, config: RunConfig, device: torch.device | str,
                           model_files: dict) -> None:
    """The run record beside a written output; if it cannot be written, the output goes too (an image without
    its record is not an output, and a rerun redoes it)."""
    try:
        write_run_record(target, record, config, device, model_files)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def os_error_message(exc: OSError, target: Path) -> str:
    """`<file>: <reason>` for a failed read or write (the file the error names, else the output)."""
    return f"{printable(str(exc.filename or target))}: {exc.strerror or exc}"


def printable(text: str) -> str:
    """A name with undecodable bytes (non-UTF-8 file names) escaped readably and losslessly: `caf\\xe9.png`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_geotiff(source: Path, scene: SceneOptions) -> bool:
    """GeoTIFF inputs give GeoTIFF outputs (georeferencing kept); everything else gives PNG."""
    try:
        return is_geotiff_input(source, scene.bands, scene.stretch)
    except OSError:
        return False  # unreadable: open_scene reports it


def open_input(source: Path, geotiff: bool, scene_options: SceneOptions, windowed: bool | None = None) -> SceneSource:
    """An input scene as the job reads it: whole, or lazily by windows (default: when windows are asked for)."""
    windowed = bool(scene_options.windows.size) if windowed is None else windowed
    return open_scene(source, scene_options.bands, scene_options.stretch, scene_options.percentiles,
                      windowed=windowed, geotiff=geotiff)


def is_windowed(scene: SceneSource, windows: WindowOptions) -> bool:
    """Whether this scene is processed in windows (asked for, and larger than one window)."""
    return bool(windows.size) and (scene.height > windows.size or scene.width > windows.size)


def input_record(source: Path, scene: SceneSource) -> dict:
    """What the run record says about the input file."""
    record = {"file": printable(source.name), "size": [scene.width, scene.height], "notes": scene.notes,
              **scene.record}
    if printable(source.name) != source.name:  # not valid UTF-8: the exact bytes too
        record["file_bytes_hex"] = source.name.encode("utf-8", "surrogateescape").hex()
    return record


def upscale_file(source: Path, target: Path, geotiff: bool, config: RunConfig, models: PipelineModels,
                 scene_options: SceneOptions, events: JobEvents, cog: bool = False) -> dict:
    """One input file -> `target` (atomically); returns its run record (without settings and model files)."""
    scene = open_input(source, geotiff, scene_options)
    for note in [*scene.notes, *layer_notes(scene, config.uncertainty)]:
        events.note(source, note)
    record = upscale_scene(scene, config, models, scene_options.windows, events.progress(source), target, cog)
    record["input"] = input_record(source, scene)
    return record


def upscale_scene(scene: SceneSource, config: RunConfig, models: PipelineModels, windows: WindowOptions,
                  callback: ProgressCallback | None, target: Path, cog: bool = False) -> dict:
    """The pipeline on one scene (whole, or window by window with scene-keyed noise), written to `target`."""
    if not is_windowed(scene, windows):
        result = run_pipeline(scene.whole(), config, models, callback)
        write_whole(scene, result.image, target, config.scale, cog)
        record = run_record(result)
        if result.spread is not None:
            record["uncertainty"].update(write_layer(scene, result.spread, target, config.uncertainty, cog))
        record["peak_memory_bytes"] = max(record["peak_memory_bytes"], peak_memory(models.device)[0])
        return record
    with row_sink(scene, target, config.scale, cog) as sink:
        record, spread = run_windows(scene, config, models, windows, callback, sink)
    if spread is not None:
        record["uncertainty"].update(write_layer(scene, spread, target, config.uncertainty, cog))
    # the peak over the whole scene, the final write included (not just one window's pipeline)
    record["peak_memory_bytes"] = max(record["peak_memory_bytes"], peak_memory(models.device)[0])
    return record


def read_input(source: Path, scene_options: SceneOptions) -> SceneSource:
    """An input read whole, as `rsvl upscale` reads it (GeoTIFF bands, stretch and nodata by the same rules)."""
    return open_input(source, is_geotiff(source, scene_options), scene_options, windowed=False)


@dataclass
class ImageRun:
    """One in-memory image through the pipeline: the output, what the caption was, and its run record."""

    image: torch.Tensor                  # (1, 3, H * scale, W * scale) in [0, 1] (8-bit levels when windowed)
    caption: str | None
    stage1_image: torch.Tensor | None    # whole images only: stage 1's output, for reuse by a stage-1 method
    record: dict
    spread: torch.Tensor | None = None   # samples >= 2: (1, 1, H * scale, W * scale) std across samples, levels


def upscale_image(image: torch.Tensor, config: RunConfig, models: PipelineModels, windows: WindowOptions,
                  callback: ProgressCallback | None = None) -> ImageRun:
    """An image in memory through the pipeline as `rsvl upscale` runs a file: whole, or window by window
    (scene-keyed noise, the scene's shared caption) blended by the one blender (what `rsvl eval` runs)."""
    scene = SceneSource(Path("<memory>"), image.shape[-2], image.shape[-1], [], image=image)
    if not is_windowed(scene, windows):
        result = run_pipeline(image, config, models, callback)
        return ImageRun(result.image, result.caption, result.stage1_image, run_record(result), result.spread)
    sink = ArraySink(scene.height * config.scale, scene.width * config.scale)
    record, spread = run_windows(scene, config, models, windows, callback, sink)
    out = torch.from_numpy(sink.array).permute(2, 0, 1)[None].float().div(255)
    return ImageRun(out, record.get("caption"), None, record, spread)


def run_windows(scene: SceneSource, config: RunConfig, models: PipelineModels, windows: WindowOptions,
                callback: ProgressCallback | None, sink: RowSink) -> tuple[dict, torch.Tensor | None]:
    """A scene window by window in this process (scene-keyed noise, the scene's shared caption), blended by the
    one blender into `sink`; returns the scene's run record and, with samples >= 2, the blended spread map
    (sample k of every window uses draw k of the scene-keyed noise, so the samples are seamless too)."""
    caption = scene_caption(scene, config, models, windows)
    records: list[dict] = []
    spreads = SpreadCanvas(scene.height, scene.width, config.scale, windows) if config.uncertainty.enabled else None

    def outputs():
        for index, tile in enumerate(plan_windows(scene.height, scene.width, windows, config.scale)):
            image, record, spread = run_window(scene, tile, config, models, callback, caption)
            records.append(record)
            if spreads is not None:
                spreads.add(index, spread)
            yield image

    blend_windows(scene.height, scene.width, config.scale, windows, outputs(), sink)
    return windowed_record(records, windows, caption), None if spreads is None else spreads.result()


def scene_caption(scene: SceneSource, config: RunConfig, models: PipelineModels,
                  windows: WindowOptions) -> str | None:
    """The caption every window of a scene shares (policy "scene"): the captioner on a downsampled overview of
    the low-resolution scene. None when windows caption themselves, the caption is given, or nothing refines."""
    if config.refine is None or config.caption_text is not None or windows.caption != "scene":
        return None
    caption = collapse_whitespace(models.get("caption").caption(scene.overview(), config.caption)[0])
    models.release("caption")
    return caption


def run_window(scene: SceneSource, tile: Tile, config: RunConfig, models: PipelineModels,
               callback: ProgressCallback | None,
               caption: str | None) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """One window of a scene through the pipeline: (its output image, its run record, its spread map or None)."""
    result = run_pipeline(scene.read(tile), config, models, callback, origin=(tile.y0, tile.x0),
                          scene_caption=caption)
    record = run_record(result)
    record["output_pixels"] = int(result.image.shape[-2] * result.image.shape[-1])
    return result.image, record, result.spread


def windowed_record(records: list[dict], windows: WindowOptions, caption: str | None) -> dict:
    """A windowed scene's run record from its windows' records (in window order, from any process)."""
    record = dict(records[0])
    record["seconds"] = {k: round(sum(r["seconds"].get(k, 0) for r in records), 3) for k in records[0]["seconds"]}
    record["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in records)
    record["windows"] = {"count": len(records), "size": windows.size, "overlap": windows.overlap,
                         "noise": "keyed by scene position (seed, draw, cell)", "caption_per": windows.caption}
    captions = [r["caption"] for r in records]
    if windows.caption == "window" and any(captions):  # one scene caption is the record's own "caption"
        record["windows"]["captions"] = captions
    if caption is not None:
        record["caption"] = caption
    record.pop("output_pixels", None)
    uncertainty = merge_window_records(records)
    if uncertainty is not None:
        record["uncertainty"] = uncertainty
    return record


def run_record(result: PipelineResult) -> dict:
    """What one pipeline run did, for the sidecar."""
    record: dict[str, Any] = {
        "caption": result.caption, "caption_source": result.caption_source,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "peak_memory_bytes": result.peak_memory_bytes, "peak_memory_kind": result.peak_memory_kind,
        "placement": result.placement, "accelerate": result.acceleration or []}
    if result.memory_plan is not None:
        record["memory_plan"] = result.memory_plan  # predicted peaks, beside the measured peak_memory_bytes
    if result.stage1_record is not None:
        record["stage1"] = result.stage1_record
    if result.uncertainty is not None:
        record["uncertainty"] = dict(result.uncertainty)
    if result.stage1_cache is not None:
        record["stage1_cache"] = {"computed_steps": result.stage1_cache.computed_steps,
                                  "reused_steps": result.stage1_cache.reused_steps}
    report = result.refine_report
    if report is not None:
        record["refine"] = {"working_size": list(report.working_size), "latent_tiles": report.latent_tiles,
                            "unet_calls": report.unet_calls, "control_calls": report.control_calls,
                            "tiling": report.tiling,
                            "cache": {"mode": report.cache.mode, "computed_steps": report.cache.computed_steps,
                                      "reused_steps": report.cache.reused_steps,
                                      "summary": report.cache.summary()}}
    return record


def _jsonable(value):
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return printable(value)
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "extras"}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value == float("inf"):
        return None
    return value


def write_run_record(target: Path, record: dict, config: RunConfig, device: torch.device | str,
                     model_files: dict) -> Path:
    """`<output>.json` beside the image: caption, settings, seed, model files, per-stage times, cache use."""
    sidecar = target.with_suffix(".json")
    caption = None if config.refine is None or config.caption_text is not None else config.caption
    settings = {"scale": config.scale, "seed": config.seed, "stage1": _jsonable(config.stage1),
                "caption": _jsonable(caption), "refine": _jsonable(config.refine),
                "preset": None if config.refine is None else config.preset, "dtype": config.dtype,
                "device": str(device)}
    if config.uncertainty.enabled:
        settings["uncertainty"] = _jsonable(config.uncertainty)
    full = _jsonable({"image": target.name, "seed": config.seed, "scale": config.scale, **record,
                      "settings": settings, "models": model_files})
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return sidecar


def model_files_record(models: PipelineModels, with_hashes: bool = True) -> dict:
    """Each stage's files: path, size and sha256 (computed once per file and cached; folders get no hash)."""
    from ..weights.manager import cached_sha256

    out = {}
    for stage, files in models.files().items():
        rows = []
        for f in files:
            row = {"path": str(f), "bytes": f.stat().st_size if f.is_file() else None}
            if with_hashes and f.is_file():
                row["sha256"] = cached_sha256(f)
            rows.append(row)
        out[stage] = rows
    return out
