"""One call per stage over a batch of images: the one way any face runs a stage.

Image k of a batch gets seed + k (a repeated image gives N samples); progress and Cancel go through one callback
(one bar over the whole batch); the model comes from a `StageSource`, which places it with room for the
activations that `memory.stage_activations` estimates for this very model and image size (computed only when the
placement or a RAM check asks for it). `run.run_pipeline` (every CLI work item) and the ComfyUI nodes call these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ..kit.errors import RsvlError
from ..kit.progress import ProgressCallback
from ..memory.estimate import MemorySetting, stage_activations
from ..refine.preview import LatentPreview
from ..refine.refiner import RefineOptions, RefineReport, refine_image, working_size
from ..stages import Stage1Result

log = logging.getLogger("rsvl")
GIB = 1024 ** 3
MEASURED_OUTPUT_PIXELS = 1024 ** 2  # estimates run the stage on fake tensors up to this size, and extrapolate above


class StageMemoryError(RsvlError):
    """The stage's estimated peak does not fit in the memory free where it runs."""


class StageSource(Protocol):
    """Where one stage's model comes from: `load()` gives it (loaded once, not yet placed); `place(need)` puts it
    where it runs, `need()` being the bytes its activations take; `release()` after the stage."""

    def load(self) -> Any: ...

    def place(self, need: Callable[[], int]) -> Any: ...

    def release(self) -> None: ...


@dataclass
class BatchRun:
    """A stage's output over a batch: images (B, 3, H', W') or captions, and the time each image took."""

    images: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stage1: Stage1Result | None = None                      # stage 1: the first image's record and cache
    reports: list[RefineReport] = field(default_factory=list)  # refine: one per image


def batch_progress(callback: ProgressCallback | None, index: int, batch: int) -> ProgressCallback | None:
    """Image `index`'s callback in a batch run one image at a time: its steps continue the batch's one bar."""
    if callback is None or batch == 1:
        return callback

    def report(step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        callback(index * total + step, batch * total, stage, preview)

    return report


def check_fits(what: str, need: int, free: int | None, advice: str) -> None:
    """Refuse, in one line and before anything is allocated, a stage whose estimated peak exceeds `free` bytes."""
    if free is not None and need > free:
        raise StageMemoryError(f"{what} needs about {need / GIB:.1f} GiB of memory, {free / GIB:.1f} GiB free: "
                               f"{advice}")


def stage1_need(model: Any, images: torch.Tensor, scale: int, options: Any) -> int:
    """Bytes stage 1 needs beside its weights for this batch: one image's activations, and the batch's outputs."""
    height, width = images.shape[-2:]

    def measure(size: tuple[int, int]) -> int:
        setting = MemorySetting(input_size=size, scale=scale, stage1=options, caption=None, refine=None)
        return stage_activations("stage1", model, setting)

    return extrapolated(measure, (height, width), MEASURED_OUTPUT_PIXELS // scale ** 2) + output_bytes(images, scale)


def output_bytes(images: torch.Tensor, scale: int) -> int:
    """The float32 outputs of a batch at `scale`: the part of a stage's need known before any model loads."""
    batch, _, height, width = images.shape
    return batch * 3 * height * scale * width * scale * 4


def extrapolated(measure: Callable[[tuple[int, int]], int], size: tuple[int, int], largest: int) -> int:
    """`measure(size)` where it has at most `largest` pixels; above, the line through two measured sizes of the same
    aspect (a quarter of `largest`, and `largest`): a stage's activations grow linearly with its image's pixels
    (tiles and per-pixel buffers), while measuring a huge image would run every one of its tiles."""
    height, width = size
    if height * width <= largest:
        return measure(size)
    points = []
    for area in (largest // 4, largest):
        factor = (area / (height * width)) ** 0.5
        small = (max(1, round(height * factor)), max(1, round(width * factor)))
        points.append((small[0] * small[1], measure(small)))
    (p1, m1), (p2, m2) = points
    return int(m2 + (m2 - m1) / max(p2 - p1, 1) * (height * width - p2))


def run_stage1(source: StageSource, images: torch.Tensor, scale: int, options: Any, seed: int,
               callback: ProgressCallback | None = None, origin: tuple[int, int] | None = None,
               free_memory: int | None = None) -> BatchRun:
    """Stage 1 over (B, 3, H, W): image k with seed + k (a one-pass model: the whole batch in one call, no seed)."""
    batch, _, height, width = images.shape
    what = f"stage 1 ({batch}x {width}x{height} -> x{scale})"
    advice = "use a smaller scale, " + ("turn tiles on (tile_size > 0), " if options.tile_size == 0 else "") + \
        "crop or split the image (large scenes: `rsvl upscale --window-size` processes them in windows)"
    check_fits(what, output_bytes(images, scale), free_memory, advice)  # before anything loads
    model = source.load()
    need = _once(lambda: stage1_need(model, images, scale, options))
    if free_memory is not None and model.device.type == "cpu":
        check_fits(what, need(), free_memory, advice)
    model = source.place(need)
    try:
        if model.kind != "sr3":  # deterministic: one call over the batch; a repeated image (N samples) runs once
            repeated = batch > 1 and images.stride(0) == 0
            start = time.perf_counter()
            result = model.upscale(images[:1] if repeated else images, scale, options, seed, callback, origin)
            if repeated:
                result.image = result.image.expand(batch, -1, -1, -1)
            return BatchRun(result.image, seconds=[(time.perf_counter() - start) / batch] * batch, stage1=result)
        runs, seconds = [], []
        for k in range(batch):
            start = time.perf_counter()
            runs.append(model.upscale(images[k:k + 1], scale, options, seed + k,
                                      batch_progress(callback, k, batch), origin))
            seconds.append(time.perf_counter() - start)
        first = Stage1Result(torch.cat([run.image for run in runs]), runs[0].record, runs[0].cache)
        return BatchRun(first.image, seconds=seconds, stage1=first)
    finally:
        source.release()


def run_caption(source: StageSource, images: torch.Tensor, options: Any,
                callback: ProgressCallback | None = None) -> BatchRun:
    """One caption per image of (B, 3, H, W) (the captioner batches them itself)."""
    model = source.place(lambda: 0)  # generation's KV cache is small beside the weights; the plan counts it
    try:
        start = time.perf_counter()
        captions = list(model.caption(images, options, callback))
        return BatchRun(captions=captions, seconds=[(time.perf_counter() - start) / len(captions)] * len(captions))
    finally:
        source.release()


def refine_need(model: Any, images: torch.Tensor, options: RefineOptions) -> int:
    """Bytes the refiner needs beside its weights for one image of this size (images run one at a time); `model`
    None (built only when placed, over a host's SDXL): the full-size refiner of the real configs."""
    work = working_size(*images.shape[-2:], options.min_size, options.size_unit)

    def measure(size: tuple[int, int]) -> int:  # at a working size as it is (min_size 0: no resize)
        setting = MemorySetting(input_size=size, scale=1, caption=None, refine=replace(options, min_size=0),
                                only=("refine",))
        return stage_activations("refine", model, setting)

    return extrapolated(measure, work, MEASURED_OUTPUT_PIXELS)


def run_refine(source: StageSource, images: torch.Tensor, captions: Sequence[str], options: RefineOptions,
               seed: int, callback: ProgressCallback | None = None, origin: tuple[int, int] | None = None,
               free_memory: int | None = None, previews: bool = False) -> BatchRun:
    """Refine (B, 3, H, W) one image at a time: image k with captions[k] and seed + k. `previews`: the callback's
    latent previews arrive as RGB, through a map fitted to this refiner's VAE (`LatentPreview`)."""
    batch, _, height, width = images.shape
    if len(captions) != batch:
        raise ValueError(f"{len(captions)} captions for {batch} images")
    work_h, work_w = working_size(height, width, options.min_size, options.size_unit)
    what = f"refine ({batch}x {width}x{height}, working size {work_w}x{work_h} for min_size {options.min_size})"
    advice = "lower min_size, crop or split the image (large scenes: `rsvl upscale --window-size`)"
    # before loading: the working image, its colour reference and the decoded result exist at once, in float32
    check_fits(what, 3 * (3 * work_h * work_w * 4) + output_bytes(images, 1), free_memory, advice)
    model = source.load()  # None: built when placed (over a host's SDXL)
    need = _once(lambda: refine_need(model, images, options))
    if free_memory is not None and model is not None and model.device.type == "cpu":
        check_fits(what, need(), free_memory, advice)
    model = source.place(need)
    try:
        outputs, reports, seconds = [], [], []
        for k in range(batch):
            single = images[k:k + 1]
            report = batch_progress(callback, k, batch)
            if previews and report is not None:
                report = LatentPreview.fit_to(model, single).rgb_previews(report)
            start = time.perf_counter()
            image, refine_report = refine_image(model, single, captions[k], options, seed + k, report, origin)
            seconds.append(time.perf_counter() - start)
            outputs.append(image)
            reports.append(refine_report)
        return BatchRun(torch.cat(outputs), seconds=seconds, reports=reports)
    finally:
        source.release()


def _once(compute: Callable[[], int]) -> Callable[[], int]:
    """`compute`, evaluated on first call only (an estimate costs a fake run of the stage). An estimate never fails
    the run: a model whose fake run raises (a custom layer, an injected fault) is placed with no extra room."""
    value: list[int] = []

    def need() -> int:
        if not value:
            try:
                value.append(int(compute()))
            except Exception as exc:  # noqa: BLE001 - anything the model's own forward raises on fake tensors
                log.warning("rsvl: no memory estimate for this stage (%s); placed without extra room",
                            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                value.append(0)
        return value[0]

    return need
