"""Work items and `run_local`, the job loop of the CLI faces (upscale, demo, caption, eval); batch runs them on Ray.

The ComfyUI nodes do not come through here: they call the stages directly. An eval item upscales through
`jobs.upscale_image` (whole, or by its own windows), not through window items.

    plan      inputs -> claimed scenes (resume: finished outputs, and outputs another run is computing, are
              skipped) -> work items: a whole image | a scene caption | a window of a scene | an input's caption
              alone (`rsvl caption`) | an eval pair (`rsvl eval`, its items planned by `rsvl_core.evaluation`)
    execute   one item on loaded models -> plain data (a record; a window's image): `ItemExecutor.execute`,
              the same call in this process and in a Ray actor
    assemble  one `Assembler` takes results in any order: it blends windows in plan order through the one
              blender into the output's row sink, writes run records, releases claims, reports events, and
              stops the job when the output storage fails

`run_local` is the local loop over these (`run_job`, `caption_job` and the evaluation are its jobs);
`rsvl_core.batch` the Ray loop over the same items.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..caption import CaptionOptions, collapse_whitespace
from ..kit.atomic import Claim, atomic_path
from ..kit.errors import RsvlError
from ..kit.progress import ProgressCallback
from ..memory.windows import window_memory_check
from ..pipeline.models import PipelineModels
from ..pipeline.options import RunConfig
from ..pipeline.run import peak_memory
from ..scenes.sources import SceneSource, header_size, row_sink
from ..scenes.windows import WindowBlender, plan_windows
from .inputs import (
    STORAGE_ERRORS,
    JobEvents,
    JobOptions,
    JobSummary,
    SceneOptions,
    collect_inputs,
    input_record,
    is_complete,
    is_geotiff,
    is_windowed,
    model_files_record,
    open_input,
    os_error_message,
    plan_job,
    printable,
    run_window,
    scene_caption,
    upscale_to,
    windowed_record,
    write_record_or_remove,
)
from .spread_layer import SpreadCanvas, layer_notes, write_layer

OPEN_SCENES = 2  # scenes an executor keeps open (their stretch computed once): windows of one scene arrive together
FAILURES = (RsvlError, ValueError, OSError)  # what fails one input (reported; the rest go on)


@dataclass
class ClaimedScene:
    """One input this run computes: its claim and, for a windowed scene, the blending state of its output."""

    source: Path
    target: Path
    geotiff: bool
    claim: Claim
    scene: SceneSource | None = None     # opened at planning time when windows are asked for
    caption: str | None = None
    caption_ready: bool = True
    blender: WindowBlender | None = None
    spreads: SpreadCanvas | None = None  # samples >= 2: the windows' spread maps, blended as the images are
    stack: ExitStack | None = None       # the row sink's temp file, until the last window is in
    ready: dict[int, dict] = field(default_factory=dict)  # window results waiting for their turn
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    failed: bool = False
    done: bool = False


@dataclass
class WorkItem:
    """One unit of work: a whole image, a scene's shared caption, or window `index` of a scene."""

    kind: str
    scene: ClaimedScene
    index: int = 0
    pixels: int = 0      # output pixels (for progress and throughput)
    attempts: int = 0    # runs of this item that died with their actor (rsvl batch)

    def call(self) -> tuple:
        """The plain arguments of `ItemExecutor.execute` for this item (what crosses to a Ray actor)."""
        scene = self.scene
        return self.kind, scene.source, scene.target, scene.geotiff, self.index, scene.caption


def claim_scene(source: Path, target: Path, geotiff: bool, options: JobOptions, summary: JobSummary,
                events: JobEvents) -> ClaimedScene | None:
    """Claim an output for this run, or skip it (complete already, or being computed by another run)."""
    claim = Claim(target)
    try:
        holder = claim.acquire()
    except OSError as exc:  # the folder refuses the claim file: this input fails, the rest go on
        summary.failed.append((source, os_error_message(exc, target)))
        events.failed(source, os_error_message(exc, target))
        return None
    # checked after claiming: a concurrent run may have just finished it
    if holder is not None or (is_complete(target) and not options.overwrite):
        claim.release()
        (summary.skipped if holder is None else summary.claimed).append(target)
        events.skipped(source, target)
        return None
    return ClaimedScene(source, target, geotiff, claim)


def output_pixels(source: Path, scale: int) -> int:
    """Output pixels of an input, from its header (0 when unreadable: executing it reports why)."""
    size = header_size(source)
    return size[0] * size[1] * scale * scale if size else 0


def plan_items(scene: ClaimedScene, config: RunConfig, options: JobOptions, assembler: Assembler) -> list[WorkItem]:
    """A claimed scene's items: one whole image, or (a shared caption +) its windows in `plan_windows` order."""
    windows = options.scene.windows
    if not windows.size:  # nothing opened here: `output_pixels` reads the header where a face needs the size
        return [WorkItem("whole", scene)]
    try:
        scene.scene = open_input(scene.source, scene.geotiff, options.scene)
    except FAILURES as exc:
        assembler.fail(scene, assembler.message(scene, exc))
        return []
    pixels = scene.scene.height * scene.scene.width * config.scale ** 2
    if not is_windowed(scene.scene, windows):
        return [WorkItem("whole", scene, pixels=pixels)]
    refusal, advice = window_memory_check(scene.scene.height, scene.scene.width, config.scale, windows,
                                          scene.scene.geo is not None, config.uncertainty.samples)
    if refusal is not None:  # before the first window: not after the machine starts swapping
        assembler.fail(scene, f"{printable(str(scene.source))}: {refusal}")
        return []
    if advice is not None:
        assembler.events.note(scene.source, advice)
    for note in [*scene.scene.notes, *layer_notes(scene.scene, config.uncertainty)]:
        assembler.events.note(scene.source, note)
    items = []
    if config.refine is not None and config.caption_text is None and windows.caption == "scene":
        scene.caption_ready = False
        items.append(WorkItem("caption", scene))
    for index, tile in enumerate(plan_windows(scene.scene.height, scene.scene.width, windows, config.scale)):
        pixels = (tile.y1 - tile.y0) * (tile.x1 - tile.x0) * config.scale ** 2
        items.append(WorkItem("window", scene, index, pixels=pixels))
    return items


class ItemExecutor:
    """Runs work items on loaded models (in this process, or inside a Ray actor); returns plain data."""

    def __init__(self, config: RunConfig, options: JobOptions, models: PipelineModels, model_files: dict,
                 events: JobEvents | None = None) -> None:
        self.config, self.options, self.models, self.model_files = config, options, models, model_files
        self.events = events or JobEvents()  # a whole image's notes and progress (silent in a Ray actor)
        self.scenes: OrderedDict[Path, SceneSource] = OrderedDict()

    def execute(self, kind: str, source: Path, target: Path, geotiff: bool, index: int = 0,
                caption: str | None = None, callback: ProgressCallback | None = None) -> Any:
        """whole: the output and its run record written -> {record, seconds}; caption: the scene's shared
        caption (or None); window: {image, record, seconds} of window `index`."""
        start = time.perf_counter()
        if kind == "describe":
            return {"caption": self.describe(source, geotiff, callback), "seconds": time.perf_counter() - start}
        if kind == "whole":
            record = upscale_to(source, target, geotiff, self.config, self.models, self.options, self.model_files,
                                self.events)
            return {"record": record, "seconds": time.perf_counter() - start}
        scene = self.scene(source, geotiff)
        if kind == "caption":
            return scene_caption(scene, self.config, self.models, self.options.scene.windows)
        tile = plan_windows(scene.height, scene.width, self.options.scene.windows, self.config.scale)[index]
        image, record, spread = run_window(scene, tile, self.config, self.models, callback, caption)
        return {"image": image, "record": record, "spread": spread, "seconds": time.perf_counter() - start}

    def describe(self, source: Path, geotiff: bool, callback: ProgressCallback | None) -> str:
        """`rsvl caption`'s item: the input read as `rsvl upscale` reads it (a large scene as an overview of at
        most 1024 px a side, read decimated), captioned."""
        scene = open_input(source, geotiff, self.options.scene, windowed=True)
        for note in scene.notes:
            self.events.note(source, note)
        return collapse_whitespace(self.models.get("caption").caption(scene.overview(), self.config.caption,
                                                                      callback)[0])

    def scene(self, source: Path, geotiff: bool) -> SceneSource:
        """An input opened for windows, kept open for the next windows of the same scene."""
        if source not in self.scenes:
            self.scenes[source] = open_input(source, geotiff, self.options.scene)
            while len(self.scenes) > OPEN_SCENES:
                self.scenes.popitem(last=False)
        self.scenes.move_to_end(source)
        return self.scenes[source]


class Assembler:
    """Turns item results into outputs: windows blended in plan order into the row sink, run records written,
    claims released, events reported; a failed item fails its scene, a full or read-only disk stops the job."""

    def __init__(self, config: RunConfig, options: JobOptions, events: JobEvents, summary: JobSummary,
                 model_files: dict, device: str, peak_device: torch.device | None = None) -> None:
        self.config, self.options, self.events, self.summary = config, options, events, summary
        self.model_files, self.device, self.peak_device = model_files, device, peak_device

    def accept(self, item: WorkItem, value: Any) -> None:
        """An item's result (in any order); the scene's output is finished when its last window is blended."""
        try:
            self.take(item, value)
        except FAILURES as exc:
            self.failed(item, exc)

    def take(self, item: WorkItem, value: Any) -> None:
        scene = item.scene
        if item.kind == "whole":
            self.finish(scene, value["record"], value["seconds"])
            return
        if item.kind == "caption":
            scene.caption, scene.caption_ready = value, True
            return
        if scene.failed:
            return
        scene.ready[item.index] = value
        if scene.blender is None:
            scene.stack = ExitStack()
            sink = scene.stack.enter_context(row_sink(scene.scene, scene.target, self.config.scale, self.options.cog))
            scene.blender = WindowBlender(scene.scene.height, scene.scene.width, self.config.scale,
                                          self.options.scene.windows, sink)
            if self.config.uncertainty.enabled:
                scene.spreads = SpreadCanvas(scene.scene.height, scene.scene.width, self.config.scale,
                                             self.options.scene.windows)
        while scene.blender.next_index in scene.ready:
            if scene.spreads is not None:
                scene.spreads.add(scene.blender.next_index, scene.ready[scene.blender.next_index]["spread"])
            result = scene.ready.pop(scene.blender.next_index)
            scene.blender.add(result["image"])
            scene.records.append(result["record"])
            scene.seconds += result["seconds"]
        if not scene.blender.done:
            return
        stack, scene.stack = scene.stack, None
        stack.close()  # the image is in place (renamed from its temp file)
        record = windowed_record(scene.records, self.options.scene.windows, scene.caption)
        if scene.spreads is not None:
            spread, scene.spreads = scene.spreads.result(), None
            record["uncertainty"].update(write_layer(scene.scene, spread, scene.target, self.config.uncertainty,
                                                     self.options.cog))
        record["input"] = input_record(scene.source, scene.scene)
        if self.peak_device is not None:  # the peak over the whole scene, the final write included
            record["peak_memory_bytes"] = max(record["peak_memory_bytes"], peak_memory(self.peak_device)[0])
        write_record_or_remove(scene.target, record, self.config, self.device, self.model_files)
        self.finish(scene, record, scene.seconds)

    def finish(self, scene: ClaimedScene, record: dict, seconds: float) -> None:
        scene.done = True
        scene.claim.release()
        self.summary.written.append(scene.target)
        self.events.finished(scene.source, scene.target, record, seconds)

    def failed(self, item: WorkItem, cause: BaseException) -> None:
        """An item raised: its scene fails (reported; the rest go on); a full or read-only disk stops the job."""
        message = self.message(item.scene, cause)
        self.fail(item.scene, message)
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRORS:
            self.summary.stopped = f"{message}; stopped with {len(self.summary.written)} output(s) complete"

    @staticmethod
    def message(scene: ClaimedScene, exc: BaseException) -> str:
        return os_error_message(exc, scene.target) if isinstance(exc, OSError) else str(exc)

    def fail(self, scene: ClaimedScene, message: str) -> None:
        if scene.failed:
            return
        scene.failed = True
        self.abort(scene)
        scene.claim.release()
        self.summary.failed.append((scene.source, message))
        self.events.failed(scene.source, message)

    @staticmethod
    def abort(scene: ClaimedScene) -> None:
        """Close a scene's unfinished output: its temp file is removed, nothing appears at the target."""
        stack, scene.stack = scene.stack, None
        if stack is not None:
            error = RuntimeError("scene not finished")
            stack.__exit__(RuntimeError, error, None)
        scene.ready.clear()

    @staticmethod
    def close(scene: ClaimedScene) -> None:
        """After a scene's items (finished, failed or interrupted): nothing half-written stays, the claim goes."""
        if not scene.done:
            Assembler.abort(scene)
        scene.claim.release()


def run_local(planned: Iterable, claim: Callable[[Any], ClaimedScene | None],
              begin: Callable[[], tuple[ItemExecutor, Assembler]],
              plan: Callable[[ClaimedScene, Assembler], list[WorkItem]], events: JobEvents,
              summary: JobSummary) -> None:
    """The local loop of every job: claim each planned unit (or skip it: done already, or taken by another run),
    plan its items, execute them in order in this process and hand each result to the assembler; stop when the
    output storage fails. `begin` runs once, before the first item (it loads the models: a wrong weights file
    stops the job there)."""
    started: tuple[ItemExecutor, Assembler] | None = None
    for unit in planned:
        if summary.stopped:
            break
        scene = claim(unit)
        if scene is None:
            continue
        try:
            started = started or begin()
            executor, assembler = started
            run_items(plan(scene, assembler), executor, assembler, events)
        finally:
            Assembler.close(scene)


def run_job(inputs, config: RunConfig, models: PipelineModels, options: JobOptions,
            events: JobEvents | None = None) -> JobSummary:
    """Upscale every input into `options.output_dir` (outputs + run records, resume, failures): the local loop
    over the work items. Each output is claimed just before it is computed, so runs started side by side on
    the same folder share the work."""
    events = events or JobEvents()
    planned = plan_job(inputs, config.scale, options, events)
    summary = JobSummary()
    events.begin([source for source, _, _ in planned])

    def begin() -> tuple[ItemExecutor, Assembler]:
        models.preload()  # once, before the first image: a wrong weights file stops the run here
        model_files = model_files_record(models, options.hash_models)
        return (ItemExecutor(config, options, models, model_files, events),
                Assembler(config, options, events, summary, model_files, str(models.device), models.device))

    run_local(planned, lambda unit: claim_scene(*unit, options, summary, events), begin,
              lambda scene, assembler: plan_items(scene, config, options, assembler), events, summary)
    return summary


@dataclass
class CaptionSummary(JobSummary):
    """What `caption_job` produced: each input's caption in input order (computed now, or read back from the
    output's record), and the failures (`written`: inputs captioned now; `skipped`: read back)."""

    captions: list[tuple[Path, str]] = field(default_factory=list)


class CaptionStore:
    """`rsvl caption -o FILE`'s outputs: `name: caption` lines in FILE and a record beside it (`FILE.json`: each
    input's caption and the settings that made it), both rewritten (atomically) after every caption, so an
    interrupted run keeps what it did and a rerun with the same settings skips it. Without a file: memory only."""

    def __init__(self, output: Path | None, settings: dict, overwrite: bool) -> None:
        self.output, self.settings, self.captions = output, settings, {}
        self.record = None if output is None else output.with_name(output.name + ".json")
        self.earlier: dict[str, str] = {} if overwrite or self.record is None else self.read_earlier()

    def read_earlier(self) -> dict[str, str]:
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or record.get("settings") != self.settings:
            return {}  # other settings are another job: caption again
        return {k: v for k, v in record.get("captions", {}).items() if isinstance(v, str)}

    @staticmethod
    def key(source: Path) -> str:
        return printable(str(Path(source).resolve()))

    def done(self, source: Path) -> str | None:
        """The caption an earlier run with the same settings made of this input, else None."""
        return self.earlier.get(self.key(source))

    def add(self, source: Path, caption: str, order: list[Path]) -> None:
        self.captions[source] = caption
        self.write(order)

    def lines(self, order: list[Path]) -> str:
        return "".join(f"{source.name}: {self.captions[source]}\n" for source in order if source in self.captions)

    def write(self, order: list[Path]) -> None:
        if self.output is None:
            return
        captions = {self.key(s): self.captions[s] for s in order if s in self.captions}
        record = {"settings": self.settings, "captions": captions}
        with atomic_path(self.record) as tmp:
            tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with atomic_path(self.output) as tmp:
            tmp.write_text(self.lines(order), encoding="utf-8")


class CaptionAssembler(Assembler):
    """`rsvl caption`'s sink: each input's caption into the store (FILE and its record rewritten)."""

    def __init__(self, store: CaptionStore, order: list[Path], *args) -> None:
        super().__init__(*args)
        self.store, self.order = store, order

    def take(self, item: WorkItem, value: Any) -> None:
        self.store.add(item.scene.source, value["caption"], self.order)
        self.finish(item.scene, {"caption": value["caption"]}, value["seconds"])


def caption_job(inputs: Iterable[Path], options: CaptionOptions, models: PipelineModels,
                scene: SceneOptions | None = None, events: JobEvents | None = None, output: Path | None = None,
                overwrite: bool = False) -> CaptionSummary:
    """`rsvl caption`: a job whose items stop after the caption, run by the same loop as `rsvl upscale`. Each
    input is read as `rsvl upscale` reads it (GeoTIFF bands and stretch, any band count and data type; a large
    scene as an overview of at most 1024 px a side, read decimated) and captioned; a bad file is reported and
    the rest go on. With `output`, the lines are written there (and resumed from its record, see `CaptionStore`)."""
    events, scene = events or JobEvents(), scene or SceneOptions()
    sources = collect_inputs(inputs)
    config = RunConfig(caption=options, refine=None, preset=None)
    job = JobOptions(Path(output).parent if output is not None else Path("."), overwrite, scene=scene)
    store = CaptionStore(output, caption_settings(options, scene, models), overwrite)
    summary = CaptionSummary()
    held = Claim(output) if output is not None else None
    if held is not None and (holder := held.acquire()) is not None:
        raise RsvlError(f"{output}: another caption run is writing it ({holder})")
    events.begin(sources)

    def claim(source: Path) -> ClaimedScene | None:
        earlier = store.done(source)
        if earlier is None:
            return ClaimedScene(source, source, is_geotiff(source, scene), Claim(source))  # the job holds `output`
        store.captions[source] = earlier
        summary.skipped.append(source)
        events.skipped(source, source)
        return None

    def begin() -> tuple[ItemExecutor, Assembler]:
        models.preload()
        return (ItemExecutor(config, job, models, {}, events),
                CaptionAssembler(store, sources, config, job, events, summary, {}, str(models.device)))

    try:
        run_local(sources, claim, begin, lambda claimed, _: [WorkItem("describe", claimed)], events, summary)
        store.write(sources)  # the lines read back too, when nothing was captioned now
    finally:
        models.release("caption")
        if held is not None:
            held.release()
    summary.captions = [(source, store.captions[source]) for source in sources if source in store.captions]
    return summary


def caption_settings(options: CaptionOptions, scene: SceneOptions, models: PipelineModels) -> dict:
    """What a caption depends on (a caption made with other settings is made again): the captioner's options, how
    inputs are read, the model files."""
    files = {stage: [printable(str(Path(f).resolve())) for f in paths] for stage, paths in models.files().items()}
    return json.loads(json.dumps({"caption": repr(options), "scene": repr(scene), "models": files}))


def run_items(items: list[WorkItem], executor: ItemExecutor, assembler: Assembler, events: JobEvents) -> None:
    """One scene's items, in order, in this process (one progress display for a windowed scene)."""
    callback = None
    for item in items:
        if item.scene.failed or assembler.summary.stopped:
            return
        if item.kind != "whole" and callback is None:
            callback = events.progress(item.scene.source)
        try:
            value = executor.execute(*item.call(), callback=callback)
        except FAILURES as exc:
            assembler.failed(item, exc)  # fails the scene (an eval pair: that pair only)
            continue
        assembler.accept(item, value)
