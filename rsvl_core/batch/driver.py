"""`run_batch`: the Ray loop over the job API's work items: dispatch to actors, retry on actor death.

Planning (claims, resume, items), execution (`ItemExecutor`, inside each actor) and assembly (`Assembler`:
windows blended in order into the scene's strip buffer, run records, the storage-full stop) are the job API's
(`jobs/work.py`), shared with `rsvl upscale`'s local loop. This module only decides which actor runs which
item, keeps at most a few window outputs per actor in hand (so the driver's memory is bounded by the strip, not
the scene), and retries an item whose actor died.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jobs.inputs import JobEvents, JobOptions, JobSummary, model_files_record, plan_job, printable
from ..jobs.work import Assembler, ClaimedScene, WorkItem, claim_scene, output_pixels, plan_items
from ..kit.atomic import remove_stale_temporaries, this_host
from ..kit.errors import RsvlError
from ..pipeline.models import ModelFiles, PipelineModels
from ..pipeline.options import RunConfig
from .cluster import ClusterOptions, connect, plan_actors
from .worker import SceneWorker

RESTART_POLL = 0.5  # seconds between asking a restarting actor whether it is back
HELD_PER_ACTOR = 2  # window outputs the driver holds (running or waiting for their turn) per actor


class BatchEvents(JobEvents):
    """JobEvents plus the batch's own (optional too): the plan (items, output pixels) and each finished item."""

    def planned(self, items: int, pixels: int) -> None:
        """How many items the batch runs, and their output pixels."""

    def advanced(self, items: int, pixels: int) -> None:
        """Items done (computed or failed) since the last call, and their output pixels."""


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


def _actor_death_errors(ray) -> tuple[type[BaseException], ...]:
    """The errors that mean the actor (or its process or node) died, not that the item is bad."""
    names = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "ObjectLostError", "NodeDiedError",
             "ActorUnavailableError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def run_batch(inputs: list[Path], config: RunConfig, files: ModelFiles, options: JobOptions,
              cluster: ClusterOptions, events: BatchEvents | None = None) -> BatchSummary:
    """Every input into `options.output_dir` on Ray actors: outputs + run records, resume, retries, failures."""
    cluster.check()
    events = events or BatchEvents()
    planned = plan_job(inputs, config.scale, options, events)
    summary = BatchSummary()
    events.begin([source for source, _, _ in planned])
    scenes = [s for s in (claim_scene(source, target, geotiff, options, summary, events)
                          for source, target, geotiff in planned) if s is not None]
    try:
        if scenes:
            _run(scenes, config, files, options, cluster, events, summary)
    finally:
        for scene in scenes:  # nothing half-written stays; every claim goes
            Assembler.close(scene)
        for stale in remove_stale_temporaries(options.output_dir):  # left by actors that were killed
            events.note(stale, "removed a temporary file left by a killed actor")
    return summary


def _run(scenes: list[ClaimedScene], config: RunConfig, files: ModelFiles, options: JobOptions,
         cluster: ClusterOptions, events: BatchEvents, summary: BatchSummary) -> None:
    ray = connect(cluster)
    # the run record's model files: hashed once, here, not once per actor
    model_files = model_files_record(PipelineModels.from_files(files, "cpu"), options.hash_models)
    assembler = Assembler(config, options, events, summary, model_files, "cpu")
    items = [item for scene in scenes for item in plan_items(scene, config, options, assembler)]
    if not items:
        return
    for item in items:  # whole images were not opened to plan them: their size, for the throughput table
        if item.kind == "whole" and not item.pixels:
            item.pixels = output_pixels(item.scene.source, config.scale)
    events.planned(len(items), sum(i.pixels for i in items))
    plan = plan_actors(cluster, ray.cluster_resources())
    remote = ray.remote(SceneWorker)
    threads = plan.num_cpus if plan.num_gpus == 0 else 0
    driver = (this_host(), os.getpid())  # actors on this host end themselves if this process is killed
    actors = [remote.options(num_gpus=plan.num_gpus, num_cpus=plan.num_cpus, max_restarts=cluster.retries,
                             max_task_retries=0, name=actor_name(n)).remote(files, config, options, model_files,
                                                                            cluster, threads, driver)
              for n in range(plan.count)]
    deaths = _actor_death_errors(ray)
    try:
        try:
            summary.actors = [ActorStats(w) for w in ray.get([a.describe.remote() for a in actors])]
        except ray.exceptions.RayTaskError as exc:  # the models did not load: stop here, as `rsvl upscale` does
            cause = getattr(exc, "cause", None) or exc
            raise RsvlError(str(cause)) from None
        assembler.device = summary.actors[0].where["device"]
        start = time.perf_counter()
        _dispatch(ray, actors, items, deaths, cluster, events, summary, assembler)
        summary.seconds = time.perf_counter() - start
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def actor_name(index: int) -> str:
    """The Ray name of this driver's actor `index` (`ray list actors` shows it; tests find actors by it)."""
    return f"rsvl-batch-{os.getpid()}-{index}"


def _dispatch(ray, actors, items: list[WorkItem], deaths, cluster: ClusterOptions, events: BatchEvents,
              summary: BatchSummary, assembler: Assembler) -> None:
    """Hand items to idle actors (windows of a scene in order, a bounded number held), collect results."""
    idle, queue, windowed = list(range(len(actors))), list(items), _scenes(items)
    held_limit, pending = HELD_PER_ACTOR * len(actors), {}  # pending: call -> (item, actor slot)

    def dispatchable(item: WorkItem) -> bool:
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
        summary.actors[slot].deaths += 1
        if summary.actors[slot].deaths <= cluster.retries:
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
            pending[actors[slot].execute.remote(*item.call())] = (item, slot)
        if not pending and not probes:
            _not_run(queue, bool(idle), summary, assembler)
            break
        done, _ = ray.wait([*pending, *probes], num_returns=1)
        if done[0] in probes:
            _probe_answered(ray, done[0], probes, idle, actors, (restarting, deaths), lost)
            continue
        item, slot = pending.pop(done[0])
        try:
            value = ray.get(done[0])
        except deaths as exc:
            lost(slot, exc)
            _retry_or_fail(item, exc, queue, cluster, summary, events, assembler)
            continue
        except ray.exceptions.RayTaskError as exc:
            idle.append(slot)
            assembler.failed(item, getattr(exc, "cause", None) or exc)
            events.advanced(1, item.pixels)
            continue
        idle.append(slot)
        _count(summary.actors[slot], item, value)
        assembler.accept(item, value)
        events.advanced(1, item.pixels)



def _not_run(queue: list[WorkItem], idle: bool, summary: BatchSummary, assembler: Assembler) -> None:
    """Nothing is running: every actor is gone (or the storage failed): report what did not run."""
    if queue and not summary.stopped and idle:
        raise RuntimeError("batch: items left that can never run")  # a planning bug, not a user error
    for item in queue:
        reason = summary.stopped or "every actor died (restarts used up)"
        assembler.fail(item.scene, f"{printable(str(item.scene.source))}: not run: {reason}")


def _probe_answered(ray, call, probes: dict, idle: list[int], actors, errors: tuple, lost) -> None:
    """A restart probe answered: the actor is back (idle again), still restarting (ask again), or dead for good."""
    restarting, deaths = errors
    slot = probes.pop(call)
    try:
        ray.get(call)
        idle.append(slot)  # back, models loaded
    except restarting:
        time.sleep(RESTART_POLL)
        probes[actors[slot].describe.remote()] = slot  # still restarting: ask again
    except deaths as exc:
        lost(slot, exc)


def _retry_or_fail(item: WorkItem, exc: BaseException, queue: list[WorkItem], cluster: ClusterOptions,
                   summary: BatchSummary, events: BatchEvents, assembler: Assembler) -> None:
    """An item whose actor died: run it again first (while retries and live actors are left), else fail its scene."""
    if not item.scene.failed and item.attempts < cluster.retries and _alive_slots(summary, cluster):
        item.attempts += 1
        summary.retried += 1
        queue.insert(0, item)
        events.note(item.scene.source, f"{item.kind} {item.index}: its actor died ({type(exc).__name__}); "
                                       f"retrying (attempt {item.attempts + 1})")
    else:
        assembler.fail(item.scene, f"{printable(str(item.scene.source))}: its actor died "
                                   f"{item.attempts + 1} time(s) ({type(exc).__name__})")


def _count(stats, item: WorkItem, value: Any) -> None:
    """One finished item in its actor's statistics."""
    stats.items += 1
    stats.pixels += item.pixels
    stats.seconds += value.get("seconds", 0.0) if isinstance(value, dict) else 0.0


def _scenes(items: list[WorkItem]) -> list[ClaimedScene]:
    return list({id(i.scene): i.scene for i in items if i.kind == "window"}.values())


def _alive_slots(summary: BatchSummary, cluster: ClusterOptions) -> bool:
    return any(a.deaths <= cluster.retries for a in summary.actors)
