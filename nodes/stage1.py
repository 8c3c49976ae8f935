"""Stage1FidelitySR: stage 1 over the IMAGE batch (SR3, or core's UPSCALE_MODEL) through the engine's stage run."""

from __future__ import annotations

import logging
import time

from comfy_api.latest import io, ui

from ..rsvl_core.hosted.handles import upscale_model_source
from ..rsvl_core.hosted.settings import (
    cpu_time_end_note,
    cpu_time_warning,
    describe_one_pass_run,
    describe_stage1_run,
    stage1_options,
    stage1_settings_problem,
)
from ..rsvl_core.pipeline.stage_runs import run_stage1
from .host import HOST, NodeError, ProgressReporter, to_bchw, to_bhwc, user_errors
from .schema import RSVLNode, ScheduleHandle, SR3Handle, node_schema, seed_input, setting_input

log = logging.getLogger("rsvl")


class Stage1FidelitySR(RSVLNode):
    NODE_ID = "Stage1FidelitySR"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return node_schema(
            node,
            description="Super-resolves 2x/4x/8x from the low-resolution image alone: with SR3 (the paper's stage 1), "
                        "or with any upscale model (one pass, resampled to the scale). Output is exactly input x "
                        "scale.",
            inputs=[
                io.Image.Input("image", tooltip="Low-resolution image(s), any size."),
                SR3Handle.Input("sr3", optional=True,
                                tooltip="sr3 output of LoadRSVLModels (SR3 or an upscale model). Connect this or "
                                        "upscale_model."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="Or an upscale model from core's Load Upscale Model (ESRGAN, SwinIR, "
                                              "HAT, ...): one pass, run as core's Upscale Image (using Model) runs "
                                              "it; sampler, steps and seed are then unused."),
                setting_input("scale", node, "Upscale factor.", default="4"),
                setting_input("sampler", node, "SR3 only: faithful = the seed's 500-step ancestral DDPM; "
                                               "ddim / dpmpp: fast solvers."),
                setting_input("steps", node, "SR3 only: sampling steps; 0 = the sampler's default (500 faithful, "
                                             "50 ddim/dpmpp)."),
                seed_input(node, "SR3 noise seed; image k of a batch uses seed + k (a repeated image gives N samples, "
                            "as `rsvl upscale --samples N`). Unused by a one-pass upscale model."),
                setting_input("tile_size", node, "Stage-1 tile edge in output pixels (224 = SR3's training size); "
                                                 "0 = whole image at once, else at least 32. Tiles bound memory."),
                setting_input("tile_overlap", node, "Output pixels shared by neighbouring tiles, blended: at most "
                                                    "half of tile_size (e.g. 16 for tile_size 32); unused when "
                                                    "tile_size is 0."),
                setting_input("tile_batch", node, "Tiles per model call: more is faster on a GPU, needs more "
                                                  "memory."),
                ScheduleHandle.Input("schedule", optional=True,
                                     tooltip="Optional DynamicStepScheduler: replaces sampler, steps and cache."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def validate_inputs(cls, tile_size=None, tile_overlap=None) -> bool | str:
        """Reject a tile_overlap that does not fit tile_size when the prompt is queued (before anything runs),
        with the typed values (see stage1_settings_problem for what is left to the run)."""
        problem = stage1_settings_problem(tile_size, tile_overlap)
        return True if problem is None else f"{cls.label()}: {problem}"


    @classmethod
    def execute(cls, image, scale, sampler, steps, seed, tile_size, tile_overlap, tile_batch=None, schedule=None,
                sr3=None, upscale_model=None) -> io.NodeOutput:
        label = cls.label()
        with user_errors(label):
            if (sr3 is None) == (upscale_model is None):
                raise NodeError("connect either sr3 (LoadRSVLModels) or upscale_model (Load Upscale Model), "
                                + ("not both" if sr3 is not None else "none is connected"))
            options = stage1_options(schedule, sampler=sampler, steps=steps, tile_size=tile_size,
                                     tile_overlap=tile_overlap, tile_batch=tile_batch)
            source = sr3.source(HOST) if sr3 is not None else upscale_model_source(HOST, upscale_model)
            notes = CpuTimeNotes(label, cls.unique_id(), sr3)
            progress = ProgressReporter(HOST, slow_warning=notes.warn)
            with notes:
                run = run_stage1(source, to_bchw(image), int(scale), options, seed, progress,
                                 free_memory=HOST.free_ram())
            record = run.stage1.record
            ran = describe_stage1_run(options, schedule, sampler, steps) if record.get("model") == "sr3" \
                else describe_one_pass_run(record, int(scale))
            log.info("rsvl stage 1 %s", ran)
            text = "\n".join([ran, *notes.lines])
            return io.NodeOutput(to_bhwc(run.images, HOST.intermediate_device()), ui=ui.PreviewText(text))


class CpuTimeNotes:
    """A long SR3 run on the CPU: one warning with the time left on the node, replaced by how long it took when the
    run ends (the frontend keeps the last text on the node, so "about 6 min left" would stay after a Cancel)."""

    def __init__(self, label: str, node_id: str | None, handle) -> None:
        self.label, self.node_id, self.handle = label, node_id, handle
        self.lines: list[str] = []
        self.started = time.monotonic()

    def warn(self, seconds_left: float, step: int, total: int) -> None:
        model = getattr(self.handle, "model", None)
        if model is None or model.kind != "sr3" or model.device.type != "cpu":
            return
        line = cpu_time_warning(self.label, seconds_left, total, seconds_left / max(total - step, 1))
        if line:
            log.warning("%s", line)
            self.lines.append(line)
            HOST.send_text(self.node_id, line)

    def __enter__(self) -> CpuTimeNotes:
        return self

    def __exit__(self, kind, *_) -> None:
        if self.lines:
            HOST.send_text(self.node_id, cpu_time_end_note(self.label, time.monotonic() - self.started, kind is None))
