"""`run_batch`: plan work items, dispatch them to Ray actors, retry on actor death, assemble windowed scenes.

Items: a whole image (the actor writes its output and run record), a scene caption (one per windowed scene,
policy "scene"), and the windows of a scene. The driver keeps at most a few window outputs per actor in hand
and blends them in window order into the scene's strip buffer (`scene.WindowBlender`), so its memory is
bounded by the strip, not the scene. Resume and claims are as in `run_job`: finished outputs are skipped,
outputs being computed by another run are left to it, and nothing half-written is ever left in place.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..atomic import Claim, remove_stale_temporaries
from ..errors import RsvlError
from ..pipeline.jobs import (
    STORAGE_ERRORS,
    JobEvents,
    JobOptions,
    JobSummary,
    SilentEvents,
    input_record,
    is_complete,
    is_windowed,
    model_files_record,
    open_input,
    os_error_message,
    plan_job,
    printable,
    windowed_record,
    write_record_or_remove,
)
from ..pipeline.models import ModelFiles, PipelineModels
from ..pipeline.options import RunConfig
from ..scene import WindowBlender, plan_windows
from ..scene_io import SceneSource, row_sink
from .cluster import ClusterOptions, connect, plan_actors
from .worker import SceneWorker

RESTART_POLL = 0.5  # seconds between asking a restarting actor whether it is back
HELD_PER_ACTOR = 2  # window outputs the driver holds (running or waiting for their turn) per actor


class BatchEvents(JobEvents, Protocol):
    """JobEvents plus the batch's own: the plan (items, output pixels) and each finished item."""

    def planned(self, items: int, pixels: int) -> None: ...
    def advanced(self, items: int, pixels: int) -> None: ...


@dataclass
class ActorStats:
    """One actor's share of the run (for the per-actor throughput table)."""

    where: dict[str, Any]
    items: int = 0
    pixels: int = 0          # output pixels of the items it computed
    seconds: float = 0.0     # time it spent computing them
    deaths: int = 0


@dataclass
class BatchSummary(JobSummary):
    actors: list[ActorStats] = field(default_factory=list)
    retried: int = 0                                   # items run again after their actor died
    seconds: float = 0.0                               # wall time from the first item to the last


@dataclass
class _Scene:
    """One input being computed: its claim, and for windowed scenes the sink, blender and window results."""

    source: Path
    target: Path
    geotiff: bool
    claim: Claim
    scene: SceneSource | None = None
    caption: str | None = None
    caption_ready: bool = True
    blender: WindowBlender | None = None
    stack: ExitStack | None = None
    ready: dict[int, dict] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    failed: bool = False


@dataclass
class _Item:
    kind: str            # "whole", "caption" or "window"
    scene: _Scene
    index: int = 0       # window index
    pixels: int = 0      # output pixels
    attempts: int = 0


def _actor_death_errors(ray) -> tuple[type[BaseException], ...]:
    """The errors that mean the actor (or its process or node) died, not that the item is bad."""
    names = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "ObjectLostError", "NodeDiedError",
             "ActorUnavailableError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _output_pixels(source: Path, geotiff: bool, scale: int) -> int:
    """Output pixels of an input, from its header (0 when unreadable: the actor reports why)."""
    try:
        if geotiff or source.suffix.lower() in (".tif", ".tiff"):
            from ..geo import open_raster

            with open_raster(source) as ds:
                return ds.width * ds.height * scale * scale
        from PIL import Image

        with Image.open(source) as image:
            return image.width * image.height * scale * scale
    except Exception:  # noqa: BLE001 - any unreadable header: the actor's error names the problem
        return 0


def run_batch(inputs: list[Path], config: RunConfig, files: ModelFiles, options: JobOptions,
              cluster: ClusterOptions, events: BatchEvents | None = None) -> BatchSummary:
    """Every input into `options.output_dir` on Ray actors: outputs + run records, resume, retries, failures."""
    cluster.check()
    events = events or _SilentBatchEvents()
    planned = plan_job(inputs, config.scale, options, events)
    summary = BatchSummary()
    events.begin([source for source, _, _ in planned])
    scenes: list[_Scene] = []
    for source, target, geotiff in planned:
        claim = Claim(target)
        if claim.acquire() is not None or (is_complete(target) and not options.overwrite):
            claim.release()
            summary.skipped.append(target)
            events.skipped(source, target)
            continue
        scenes.append(_Scene(source, target, geotiff, claim))
    try:
        if scenes:
            _run(scenes, config, files, options, cluster, events, summary)
    finally:
        for scene in scenes:
            _abort(scene)
            scene.claim.release()
        for stale in remove_stale_temporaries(options.output_dir):  # left by actors that were killed
            events.note(stale, "removed a temporary file left by a killed actor")
    return summary


def _plan_items(scenes: list[_Scene], config: RunConfig, options: JobOptions, summary: BatchSummary,
                events: BatchEvents) -> list[_Item]:
    """Whole images as one item each; windowed scenes as (caption +) windows, opened here for their size."""
    items: list[_Item] = []
    windows = options.scene.windows
    for scene in scenes:
        if not windows.size:
            items.append(_Item("whole", scene, pixels=_output_pixels(scene.source, scene.geotiff, config.scale)))
            continue
        try:
            scene.scene = open_input(scene.source, scene.geotiff, options.scene)
        except (RsvlError, ValueError, OSError) as exc:
            _fail(scene, _message(scene, exc), summary, events)
            continue
        pixels = scene.scene.height * scene.scene.width * config.scale ** 2
        if not is_windowed(scene.scene, windows):
            items.append(_Item("whole", scene, pixels=pixels))
            continue
        for note in scene.scene.notes:
            events.note(scene.source, note)
        needs_caption = config.refine is not None and config.caption_text is None and windows.caption == "scene"
        if needs_caption:
            scene.caption_ready = False
            items.append(_Item("caption", scene))
        for index, tile in enumerate(plan_windows(scene.scene.height, scene.scene.width, windows, config.scale)):
            items.append(_Item("window", scene, index,
                               pixels=(tile.y1 - tile.y0) * (tile.x1 - tile.x0) * config.scale ** 2))
    return items


def _run(scenes: list[_Scene], config: RunConfig, files: ModelFiles, options: JobOptions,
         cluster: ClusterOptions, events: BatchEvents, summary: BatchSummary) -> None:
    ray = connect(cluster)
    items = _plan_items(scenes, config, options, summary, events)
    if not items:
        return
    events.planned(len(items), sum(i.pixels for i in items))
    # the run record's model files: hashed once, here, not once per actor
    model_files = model_files_record(PipelineModels.from_files(files, "cpu"), options.hash_models)
    plan = plan_actors(cluster, ray.cluster_resources())
    remote = ray.remote(SceneWorker)
    threads = plan.num_cpus if plan.num_gpus == 0 else 0
    actors = [remote.options(num_gpus=plan.num_gpus, num_cpus=plan.num_cpus, max_restarts=cluster.retries,
                             max_task_retries=0, name=actor_name(n)).remote(files, config, options, model_files,
                                                                            cluster, threads)
              for n in range(plan.count)]
    deaths = _actor_death_errors(ray)
    try:
        try:
            summary.actors = [ActorStats(w) for w in ray.get([a.describe.remote() for a in actors])]
        except ray.exceptions.RayTaskError as exc:  # the models did not load: stop here, as `rsvl upscale` does
            cause = getattr(exc, "cause", None) or exc
            raise RsvlError(str(cause)) from None
        start = time.perf_counter()
        _dispatch(ray, actors, items, deaths, config, options, cluster, events, summary, model_files)
        summary.seconds = time.perf_counter() - start
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def actor_name(index: int) -> str:
    """The Ray name of this driver's actor `index` (`ray list actors` shows it; tests find actors by it)."""
    return f"rsvl-batch-{os.getpid()}-{index}"


def _dispatch(ray, actors, items: list[_Item], deaths, config: RunConfig, options: JobOptions,
              cluster: ClusterOptions, events: BatchEvents, summary: BatchSummary, model_files: dict) -> None:
    """Hand items to idle actors (windows of a scene in order, a bounded number held), collect results."""
    idle = list(range(len(actors)))
    pending: dict[Any, tuple[_Item, int]] = {}
    queue = list(items)
    held_limit = HELD_PER_ACTOR * len(actors)
    windowed = _scenes(items)

    def dispatchable(item: _Item) -> bool:
        if item.kind != "window":
            return True
        if not item.scene.caption_ready:
            return False
        needed = item.scene.blender.next_index if item.scene.blender is not None else 0
        held = sum(1 for i, _ in pending.values() if i.kind == "window") + sum(len(s.ready) for s in windowed)
        return held < held_limit or item.index == needed  # the window the blender waits for always runs

    restarting = getattr(ray.exceptions, "ActorUnavailableError", ())
    probes: dict[Any, int] = {}  # actor slot -> a call that returns once Ray has restarted that actor

    def lost(slot: int, exc: BaseException) -> None:
        """An actor died: Ray restarts it (models loaded again) unless its restarts are used up."""
        stats = summary.actors[slot]
        stats.deaths += 1
        if stats.deaths <= cluster.retries:
            probes[actors[slot].describe.remote()] = slot

    failures_seen = len(summary.failed)
    while queue or pending or (probes and queue):
        if len(summary.failed) != failures_seen:  # a scene failed: drop its remaining items (once per failure)
            queue, failures_seen = [i for i in queue if not i.scene.failed], len(summary.failed)
        while idle and queue and not summary.stopped:
            item = next((i for i in queue if dispatchable(i)), None)
            if item is None:
                break
            queue.remove(item)
            slot = idle.pop(0)
            pending[_submit(actors[slot], item)] = (item, slot)
        if not pending and not probes:
            if queue and not summary.stopped and idle:
                raise RuntimeError("batch: items left that can never run")  # a planning bug, not a user error
            for item in queue:  # every actor is gone (or the storage failed): report what did not run
                reason = summary.stopped or "every actor died (restarts used up)"
                _fail(item.scene, f"{printable(str(item.scene.source))}: not run: {reason}", summary, events)
            break
        done, _ = ray.wait([*pending, *probes], num_returns=1)
        if done[0] in probes:
            slot = probes.pop(done[0])
            try:
                ray.get(done[0])
                idle.append(slot)  # back, models loaded
            except restarting:
                time.sleep(RESTART_POLL)
                probes[actors[slot].describe.remote()] = slot  # still restarting: ask again
            except deaths as exc:
                lost(slot, exc)
            continue
        item, slot = pending.pop(done[0])
        try:
            value = ray.get(done[0])
        except deaths as exc:
            lost(slot, exc)
            if not item.scene.failed and item.attempts < cluster.retries and _alive_slots(summary, cluster):
                item.attempts += 1
                summary.retried += 1
                queue.insert(0, item)
                events.note(item.scene.source, f"{item.kind} {item.index}: its actor died ({type(exc).__name__}); "
                                               f"retrying (attempt {item.attempts + 1})")
            else:
                _fail(item.scene, f"{printable(str(item.scene.source))}: its actor died "
                                  f"{item.attempts + 1} time(s) ({type(exc).__name__})", summary, events)
            continue
        except ray.exceptions.RayTaskError as exc:
            idle.append(slot)
            _task_failed(item, getattr(exc, "cause", None) or exc, summary, events)
            events.advanced(1, item.pixels)
            continue
        idle.append(slot)
        stats = summary.actors[slot]
        stats.items += 1
        stats.pixels += item.pixels
        stats.seconds += value.get("seconds", 0.0) if isinstance(value, dict) else 0.0
        try:
            _finish_item(item, value, config, options, events, summary, model_files)
        except (RsvlError, ValueError, OSError) as exc:
            _task_failed(item, exc, summary, events)
        events.advanced(1, item.pixels)


def _scenes(items: list[_Item]) -> list[_Scene]:
    return list({id(i.scene): i.scene for i in items if i.kind == "window"}.values())


def _alive_slots(summary: BatchSummary, cluster: ClusterOptions) -> bool:
    return any(a.deaths <= cluster.retries for a in summary.actors)


def _submit(actor, item: _Item):
    scene = item.scene
    if item.kind == "whole":
        return actor.whole.remote(scene.source, scene.target, scene.geotiff)
    if item.kind == "caption":
        return actor.caption.remote(scene.source, scene.geotiff)
    return actor.window.remote(scene.source, scene.geotiff, item.index, scene.caption)


def _finish_item(item: _Item, value, config: RunConfig, options: JobOptions, events: BatchEvents,
                 summary: BatchSummary, model_files: dict) -> None:
    scene = item.scene
    if item.kind == "whole":
        scene.claim.release()
        summary.written.append(scene.target)
        events.finished(scene.source, scene.target, value["record"], value["seconds"])
        return
    if item.kind == "caption":
        scene.caption, scene.caption_ready = value, True
        return
    if scene.failed:
        return
    scene.ready[item.index] = value
    if scene.blender is None:
        scene.stack = ExitStack()
        sink = scene.stack.enter_context(row_sink(scene.scene, scene.target, config.scale, options.cog))
        scene.blender = WindowBlender(scene.scene.height, scene.scene.width, config.scale, options.scene.windows,
                                      sink)
    while scene.blender.next_index in scene.ready:
        result = scene.ready.pop(scene.blender.next_index)
        scene.blender.add(result["image"])
        scene.records.append(result["record"])
        scene.seconds += result["seconds"]
    if not scene.blender.done:
        return
    stack, scene.stack = scene.stack, None
    stack.close()  # the image is in place (renamed from its temp file)
    record = windowed_record(scene.records, options.scene.windows, scene.caption)
    record["input"] = input_record(scene.source, scene.scene)
    write_record_or_remove(scene.target, record, config, summary.actors[0].where["device"], model_files)
    scene.claim.release()
    summary.written.append(scene.target)
    events.finished(scene.source, scene.target, record, scene.seconds)


def _task_failed(item: _Item, cause: BaseException, summary: BatchSummary, events: BatchEvents) -> None:
    """An item raised: its scene fails (reported, the rest go on); a full or read-only disk stops the run."""
    message = _message(item.scene, cause)
    _fail(item.scene, message, summary, events)
    if isinstance(cause, OSError) and cause.errno in STORAGE_ERRORS:
        summary.stopped = f"{message}; stopped with {len(summary.written)} output(s) complete"


def _message(scene: _Scene, exc: BaseException) -> str:
    return os_error_message(exc, scene.target) if isinstance(exc, OSError) else str(exc)


def _fail(scene: _Scene, message: str, summary: BatchSummary, events: BatchEvents) -> None:
    if scene.failed:
        return
    scene.failed = True
    _abort(scene)
    scene.claim.release()
    summary.failed.append((scene.source, message))
    events.failed(scene.source, message)


def _abort(scene: _Scene) -> None:
    """Close a scene's unfinished output: its temp file is removed, nothing appears at the target."""
    stack, scene.stack = scene.stack, None
    if stack is not None:
        error = RuntimeError("scene not finished")
        stack.__exit__(RuntimeError, error, None)
    scene.ready.clear()


class _SilentBatchEvents(SilentEvents):
    def planned(self, items: int, pixels: int) -> None:
        pass

    def advanced(self, items: int, pixels: int) -> None:
        pass
