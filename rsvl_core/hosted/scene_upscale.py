"""A scene file in a host's input folder -> windows -> the job engine's work items -> a GeoTIFF/COG (or PNG) in its
output folder, with the host's models: what the RSVL Upscale Scene node calls.

Nothing here loops over windows itself: the scene is claimed, planned, executed and assembled by `work.run_local`
with `plan_items`, `ItemExecutor` and `Assembler`, exactly as `rsvl upscale --window-size` runs it (scene-keyed
noise, the scene's shared caption, one blender, run records, resume of finished outputs). What the host adds:
`HostedModels` (the stages' models from the node's handles and the host's MODEL/CLIP/VAE/UPSCALE_MODEL, placed by
the host's memory manager), a progress report per window, and a Cancel check between windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..jobs.inputs import (
    JobEvents,
    JobOptions,
    JobSummary,
    SceneOptions,
    is_complete,
    model_files_record,
    open_input,
    plan_job,
    printable,
)
from ..jobs.work import Assembler, ItemExecutor, WorkItem, claim_scene, plan_items, run_local
from ..kit.errors import RsvlError
from ..kit.progress import ProgressCallback
from ..memory.windows import window_memory_check
from ..pipeline.models import PipelineModels, StageSpec
from ..pipeline.options import RunConfig, StepSettings
from ..pipeline.stage_runs import StageSource
from ..scenes.sources import header_size

PREVIEW_SIDE = 512  # the preview IMAGE: the output shrunk to at most this many pixels a side, read decimated


class _HostStages:
    """The engine's `Placement` over stage sources the host places (nothing to do here: each source places itself)."""

    plan = "host memory manager"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def acquire(self, stage: str, model: Any, memory_required: Any = 0) -> None:
        """Nothing: `HostedModels.get` places through the stage's source."""

    def release(self, stage: str, model: Any) -> None:
        """Nothing: the host's memory manager offloads when it needs the room."""


class _OneEstimate:
    """A stage source for one scene's windows: they are all one size (`plan_windows`), so the estimate of the stage's
    activations (a trial run of its shapes) is made for the first window and reused for the rest."""

    def __init__(self, source: StageSource) -> None:
        self.inner, self.need = source, None

    def load(self) -> Any:
        return self.inner.load()

    def place(self, need: Callable[[], int]) -> Any:
        def once() -> int:
            if self.need is None:
                self.need = int(need())
            return self.need

        return self.inner.place(once)

    def release(self) -> None:
        self.inner.release()


class HostedModels(PipelineModels):
    """`PipelineModels` whose stages come from a host: each stage a `StageSource` (a loader node's handle, or the
    host's own models: core's UPSCALE_MODEL, an SDXL refiner over core's MODEL/CLIP/VAE), placed by the host's memory
    manager. The job engine asks it for stages as it asks the CLI's models."""

    def __init__(self, device: torch.device, sources: dict[str, StageSource],
                 files: dict[str, list[Path]] | None = None) -> None:
        files = files or {}
        specs = {stage: StageSpec(stage, lambda _device, s=source: s.load(), [Path(f) for f in files.get(stage, [])])
                 for stage, source in sources.items() if source is not None}
        super().__init__(device, _HostStages(device), specs.get("stage1"), specs.get("caption"),
                         specs.get("refine"))
        self.sources = {stage: _OneEstimate(source) for stage, source in sources.items() if source is not None}

    def source(self, stage: str) -> StageSource:
        if stage not in self.sources:
            raise ValueError(f"no model configured for stage {stage!r}")
        return self.sources[stage]

    def load(self, stage: str):
        """The stage's model as its source gives it (not placed; a refiner over a host's SDXL is built when placed)."""
        return self.source(stage).load()

    def get(self, stage: str, memory_required: int | Callable[[], int] = 0):
        need = memory_required if callable(memory_required) else (lambda: int(memory_required))
        return self.source(stage).place(need)

    def preload(self) -> None:
        """Load every stage now (a wrong file fails before the first window); the host places them when they run."""
        for source in self.sources.values():
            source.load()

    def release(self, stage: str) -> None:
        if stage in self.sources:
            self.sources[stage].release()


@dataclass
class SceneEvents(JobEvents):
    """What the node hears from the job: notes and failures as lines, a callback per window done, and the stages'
    step callback (the host's Cancel check)."""

    on_window: Callable[[int, int], None] | None = None
    steps: ProgressCallback | None = None
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    record: dict | None = None

    def note(self, source: Path, text: str) -> None:
        self.lines.append(f"{printable(Path(source).name)}: {text}")

    def skipped(self, source: Path, target: Path) -> None:
        self.lines.append(f"{printable(Path(target).name)}: complete already (an earlier run finished it): not "
                          "computed again")

    def progress(self, source: Path) -> ProgressCallback | None:
        return self.steps

    def finished(self, source: Path, target: Path, record: dict, seconds: float) -> None:
        self.record = record
        self.lines.append(f"{printable(Path(target).name)}: written in {seconds:.1f} s")

    def failed(self, source: Path, message: str) -> None:
        self.failures.append(message)


class WindowExecutor(ItemExecutor):
    """The job's executor, reporting each window done (and giving the host a Cancel check between windows)."""

    def __init__(self, *args, events: SceneEvents, windows: int) -> None:
        super().__init__(*args, events)
        self.scene_events, self.windows, self.done = events, windows, 0

    def execute(self, kind: str, *args, callback: ProgressCallback | None = None, **kwargs) -> Any:
        if kind == "window" and callback is not None:
            callback(self.done, self.windows, "scene windows")  # Cancel between windows
        value = super().execute(kind, *args, callback=callback, **kwargs)
        if kind == "window":
            self.done += 1
            if self.scene_events.on_window is not None:
                self.scene_events.on_window(self.done, self.windows)
        return value


@dataclass
class SceneRun:
    """What one Upscale Scene run did: the output (computed now, or complete already), its record, notes."""

    target: Path
    geotiff: bool
    computed: bool
    windows: int
    record: dict | None
    lines: list[str]
    seconds: float


def scene_config(values: dict[str, Any], refine: bool, caption_text: str | None,
                 schedule: StepSettings | None) -> RunConfig:
    """The run's options from the node's setting values (the CLI's builder); a schedule sets steps and caches."""
    config = RunConfig.from_values(stage1_only=not refine, caption_text=caption_text or None, **values)
    if schedule is None:
        return config
    return replace(config, stage1=schedule.apply_to_stage1(config.stage1),
                   refine=None if config.refine is None else schedule.apply_to_refine(config.refine))


def memory_check(source: Path, scale: int, scene: SceneOptions, geotiff: bool) -> str | None:
    """Before any model loads: refuse (RsvlError) a scene whose assembly would not fit in memory; the advice
    line when it is close, else None (the job checks again as it plans the windows, as for the CLI)."""
    size = header_size(source)
    if size is None or not scene.windows.size:
        return None
    refusal, advice = window_memory_check(size[0], size[1], scale, scene.windows, geotiff)
    if refusal is not None:
        raise RsvlError(f"{printable(source.name)}: {refusal}")
    return advice


def upscale_scene_file(source: Path, output_dir: Path, config: RunConfig, scene: SceneOptions, models: HostedModels,
                       cog: bool = False, events: SceneEvents | None = None, hash_models: bool = True) -> SceneRun:
    """One scene file -> its output in `output_dir`, named and written as `rsvl upscale` names and writes it
    (`<stem>_x<scale>.tif` for a GeoTIFF, with its run record beside it). A complete output is not computed
    again (resume); an interrupted run (the host's Cancel raises from the step callback) leaves no partial file."""
    events = events or SceneEvents()
    options = JobOptions(output_dir, hash_models=hash_models, scene=scene, cog=cog)
    start = time.perf_counter()
    planned = plan_job([source], config.scale, options, events)
    (_, target, geotiff), = planned
    advice = None if is_complete(target) and not options.overwrite else memory_check(source, config.scale, scene,
                                                                                   geotiff)
    if advice is not None:
        events.note(source, advice)
    summary = JobSummary()
    executors: list[WindowExecutor] = []

    def begin() -> tuple[ItemExecutor, Assembler]:
        models.preload()  # once, before the first window: a wrong weights file stops the run here
        files = model_files_record(models, options.hash_models)
        executors.append(WindowExecutor(config, options, models, files, events=events, windows=0))
        return executors[0], Assembler(config, options, events, summary, files, str(models.device), models.device)

    def plan(claimed, assembler: Assembler) -> list[WorkItem]:
        items = plan_items(claimed, config, options, assembler)
        executors[0].windows = sum(item.kind == "window" for item in items)
        return items

    run_local(planned, lambda unit: claim_scene(*unit, options, summary, events), begin, plan, events, summary)
    if summary.failed:
        raise RsvlError(summary.failed[0][1])
    if summary.claimed:
        raise RsvlError(f"{printable(target.name)}: another run is computing this output now (its claim file is "
                        "beside it); queue again when it is done")
    return SceneRun(target, geotiff, bool(summary.written), executors[0].done if executors else 0, events.record,
                    events.lines, time.perf_counter() - start)


def output_preview(run: SceneRun, side: int = PREVIEW_SIDE) -> torch.Tensor:
    """The output shrunk to at most `side` pixels a side (1, 3, h, w) in [0, 1], read decimated (never whole)."""
    return open_input(run.target, run.geotiff, SceneOptions(), windowed=True).overview(side).float().clamp(0, 1)
