"""RSVLUpscaleScene: a scene file in input/ (any size: read window by window, never whole) through the job engine's
work items, as `rsvl upscale --window-size` runs it, into a GeoTIFF/COG (or PNG) in output/; with ComfyUI's models
or the pack's, a progress bar over the windows, Cancel between them, and a memory check before anything loads."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io, ui

from ..rsvl_core.hosted.handles import upscale_model_source
from ..rsvl_core.hosted.paths import resolve_input, resolve_output
from ..rsvl_core.hosted.scene_files import input_choices, input_problem
from ..rsvl_core.hosted.scene_upscale import HostedModels, SceneEvents, output_preview, scene_config, upscale_scene_file
from ..rsvl_core.hosted.sdxl import refine_source
from ..rsvl_core.hosted.settings import setting_values
from ..rsvl_core.jobs.inputs import scene_options_from
from ..rsvl_core.pipeline.components import positive_prompt
from .host import HOST, NodeError, ProgressReporter, folder_paths, to_bhwc, user_errors
from .schema import (
    CaptionerHandle,
    ModelPatchInput,
    RefinerHandle,
    RSVLNode,
    ScheduleHandle,
    SR3Handle,
    node_schema,
    seed_input,
    setting_input,
)

log = logging.getLogger("rsvl")
NODE = "RSVLUpscaleScene"


class RSVLUpscaleScene(RSVLNode):
    NODE_ID = NODE

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            NODE,
            description="Upscales a scene too large for an IMAGE (e.g. 20000 x 20000) straight from a file in "
                        "ComfyUI's input folder to a file in output/: window by window with seamless noise and one "
                        "blender, exactly as `rsvl upscale --window-size` (same pixels, run record beside it). "
                        "A finished output is not computed again; Cancel stops between windows.",
            is_output_node=True,
            inputs=[
                io.Combo.Input("scene", options=input_choices(folder_paths()),
                               tooltip="A raster in ComfyUI's input folder (GeoTIFF, JPEG 2000, VRT or any image; put "
                                       "it there or upload it through /upload/image); names outside it are refused."),
                io.String.Input("output_folder", default="rsvl_scenes",
                                tooltip="Folder inside ComfyUI's output folder; the output is named as the CLI names "
                                        "it: <scene>_x<scale>.tif (a GeoTIFF input) or .png, a run record beside it."),
                SR3Handle.Input("sr3", optional=True, tooltip="Stage 1 from LoadRSVLModels (SR3 or an upscale model). "
                                                              "Connect this or upscale_model."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="Or stage 1 from core's Load Upscale Model (one pass, no seed)."),
                CaptionerHandle.Input("captioner", optional=True,
                                      tooltip="Captioner from LoadRSVLModels (with a refiner and no caption text)."),
                RefinerHandle.Input("refiner", optional=True,
                                    tooltip="Refiner from LoadRSVLModels: connect it to refine (stage 2); without it "
                                            "stage 1 runs alone."),
                io.Model.Input("model", optional=True, tooltip="Optional SDXL MODEL of core's Load Checkpoint: the "
                                                               "refiner runs over these weights (with vae)."),
                io.Clip.Input("clip", optional=True, tooltip="Optional CLIP of the same checkpoint (text encoders)."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE of the same Load Checkpoint (with model)."),
                ModelPatchInput.Input("model_patch", optional=True,
                                      tooltip="Optional SUPIR MODEL_PATCH of core's ModelPatchLoader (with model)."),
                ScheduleHandle.Input("schedule", optional=True,
                                     tooltip="Optional DynamicStepScheduler: replaces sampler, steps and caches."),
                io.String.Input("caption", default="", multiline=True, optional=True,
                                tooltip="Caption text for every window (as --caption); empty: the captioner "
                                        "describes the scene (caption_per)."),
                setting_input("scale", NODE, "Upscale factor.", default="4"),
                seed_input(NODE, "Seeds every random draw; windows key their noise by scene position, so the "
                                 "scene is seamless and the same as the CLI's."),
                setting_input("sampler", NODE), setting_input("steps", NODE),
                setting_input("tile_size", NODE), setting_input("tile_overlap", NODE),
                setting_input("window_size", NODE, default=512),
                setting_input("window_overlap", NODE),
                setting_input("caption_per", NODE),
                setting_input("bands", NODE, multiline=False), setting_input("stretch", NODE),
                setting_input("percentiles", NODE, multiline=False),
                setting_input("cog", NODE),
                setting_input("preset", NODE), setting_input("refine_steps", NODE),
                setting_input("positive_prompt", NODE), setting_input("negative_prompt", NODE),
                setting_input("min_size", NODE),
            ],
            outputs=[io.String.Output(display_name="file", tooltip="The output's name inside output/."),
                     io.Image.Output(display_name="preview", tooltip="The output shrunk to at most 512 px a side "
                                                                     "(read decimated, never whole).")],
        )

    @classmethod
    def validate_inputs(cls, scene=None, output_folder=None) -> bool | str:
        """A name outside input/ or output/ (../, absolute, an escaping symlink), or no such scene: refused in one
        line when the prompt is queued."""
        problem = None if scene is None else input_problem(folder_paths(), scene)
        if problem is None and output_folder is not None:
            try:
                resolve_output(folder_paths(), output_folder)
            except ValueError as exc:
                problem = f"output_folder: {exc}"
        return True if problem is None else f"{cls.label()}: {problem}"

    @classmethod
    def fingerprint_inputs(cls, scene=None, output_folder=None, **_) -> str:
        """Run again when the scene file changes, or its output folder's files do (an output removed is made
        again; a Cancel left none, so the next queue resumes)."""
        parts = [str(scene), str(output_folder)]
        try:
            stat = resolve_input(folder_paths(), scene).stat()
            folder = resolve_output(folder_paths(), output_folder)
            parts += [str(stat.st_size), str(stat.st_mtime_ns)]
            parts += sorted(f"{e.name}:{e.stat().st_mtime_ns}" for e in os.scandir(folder) if e.is_file())
        except (OSError, ValueError, TypeError):
            pass
        return "|".join(parts)

    @classmethod
    def execute(cls, scene, output_folder, scale, seed, sampler, steps, tile_size, tile_overlap, window_size,
                window_overlap, caption_per, bands, stretch, percentiles, cog, preset, refine_steps, positive_prompt,
                negative_prompt, min_size, sr3=None, upscale_model=None, captioner=None, refiner=None, model=None,
                clip=None, vae=None, model_patch=None, schedule=None, caption="") -> io.NodeOutput:
        label = cls.label()
        with user_errors(label):
            fp = folder_paths()
            source, output_dir = resolve_input(fp, scene), resolve_output(fp, output_folder)
            refine = refiner is not None or model is not None
            inputs = dict(scale=scale, seed=seed, sampler=sampler, steps=steps, tile_size=tile_size,
                          tile_overlap=tile_overlap, preset=preset)
            if refine:
                inputs.update(refine_steps=refine_steps, positive_prompt=positive_prompt,
                              negative_prompt=negative_prompt, min_size=min_size)
            config = scene_config(setting_values(NODE, inputs), refine, (caption or "").strip() or None, schedule)
            scene_options = scene_options_from(dict(window_size=window_size, window_overlap=window_overlap,
                                                    caption_per=caption_per, bands=bands, stretch=stretch,
                                                    percentiles=percentiles))
            models = HostedModels(HOST.torch_device(getattr(sr3, "device", "auto")),
                                  stage_sources(config, sr3, upscale_model, captioner, refiner, model, clip, vae,
                                                model_patch), model_files(sr3, captioner, refiner))
            bar = ProgressReporter(HOST, previews=False)
            windows_text = []

            def window_done(done: int, total: int) -> None:
                bar(done, total, "scene windows")
                windows_text[:] = [f"window {done}/{total} done"]
                HOST.send_text(cls.unique_id(), windows_text[0])

            events = SceneEvents(on_window=window_done, steps=lambda *_: HOST.check_interrupt())
            run = upscale_scene_file(source, output_dir, config, scene_options, models, cog=bool(cog), events=events)
            name = os.path.relpath(run.target, fp.get_output_directory())
            how = f"{run.windows} windows computed" if run.computed else "complete already: not computed again"
            lines = [f"{name}: {how}", *run.lines]
            for line in lines:
                log.info("rsvl scene %s", line)
            preview = to_bhwc(output_preview(run), HOST.intermediate_device())
            return io.NodeOutput(name, preview, ui=ui.PreviewText("\n".join(lines)))


def stage_sources(config, sr3, upscale_model, captioner, refiner, model, clip, vae, model_patch) -> dict:
    """Each stage the run uses, as a stage run takes it, from the node's inputs (one line when they do not fit)."""
    if (sr3 is None) == (upscale_model is None):
        raise NodeError("connect either sr3 (LoadRSVLModels) or upscale_model (Load Upscale Model), "
                        + ("not both" if sr3 is not None else "none is connected"))
    sources = {"stage1": sr3.source(HOST) if sr3 is not None else upscale_model_source(HOST, upscale_model)}
    if config.refine is None:
        return sources
    if config.caption_text is None:
        if captioner is None or not captioner.chosen:
            raise NodeError("refining needs a caption: connect captioner (LoadRSVLModels) or type the caption text")
        sources["caption"] = captioner.source(HOST)
    if refiner is None:
        raise NodeError("model / clip / vae need refiner (LoadRSVLModels with supir_model) for SUPIR's parts")
    prompts = [] if config.caption_text is None else [positive_prompt(config.caption_text, config.refine),
                                                       config.refine.negative_prompt]
    sources["refine"], _ = refine_source(HOST, refiner, model, clip, vae, model_patch, prompts)
    return sources


def model_files(*handles) -> dict[str, list]:
    """The model files of the pack's handles, by stage, for the run record (core's models name no file here)."""
    stages = {"stage-1": "stage1", "captioner": "caption", "refiner": "refine"}
    return {stages[h.kind]: [p for p in h.sources.values() if p] for h in handles if h is not None}
