"""ControlNetRefine: stage 2 over each IMAGE batch with its captions, through the engine's refine run."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..rsvl_core.hosted.sdxl import refine_source
from ..rsvl_core.hosted.settings import as_list, describe_refine_run, first, pair_captions, refine_options
from ..rsvl_core.pipeline.components import positive_prompt
from ..rsvl_core.pipeline.stage_runs import run_refine
from .host import HOST, ProgressReporter, to_bchw, to_bhwc, user_errors
from .schema import ModelPatchInput, RefinerHandle, RSVLNode, ScheduleHandle, node_schema, seed_input, setting_input

log = logging.getLogger("rsvl")


class ControlNetRefine(RSVLNode):
    NODE_ID = "ControlNetRefine"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return node_schema(
            node,
            description="Stage 2: adds detail to the stage-1 image with SDXL steered by SUPIR's control network, "
                        "guided by the caption. Output is exactly the input size. Captions pair with images in "
                        "order (one caption for all, or one per image).",
            is_input_list=True,  # N captions (a list from LlavaRSCaption) meet one batch of N images in one run
            inputs=[
                io.Image.Input("image", tooltip="The stage-1 image(s)."),
                RefinerHandle.Input("refiner", tooltip="refiner output of LoadRSVLModels."),
                io.String.Input("caption", default="", multiline=True,
                                tooltip="What the image shows: link LlavaRSCaption or any text node, or type it. "
                                        "Joined with the positive prompt."),
                setting_input("positive_prompt", node, "Appended to the caption (default: the seed's)."),
                setting_input("negative_prompt", node, "Negative prompt (default: the seed's)."),
                setting_input("steps", node, "Sampling steps (seed: 50). A connected schedule replaces this."),
                setting_input("cfg_scale", node),
                setting_input("cfg_scale_start", node),
                setting_input("control_scale", node),
                setting_input("color_fix", node),
                seed_input(node),
                setting_input("latent_tile_size", node),
                setting_input("min_size", node),
                setting_input("restoration_scale", node),
                setting_input("s_churn", node),
                setting_input("preset", node, "Refiner preset: the values of the settings without an input here "
                                              "(paper: the seed's infer.py settings)."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional SDXL MODEL from core's Load Checkpoint: the refiner runs over these "
                                       "very weights (no second SDXL in memory); connect its VAE too."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Optional CLIP of the same checkpoint: encodes the caption + positive prompt "
                                      "and the negative prompt as core's CLIP Text Encode does. Without it the text "
                                      "encoders of LoadRSVLModels' sdxl_checkpoint are used (only they load)."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE of the same Load Checkpoint (with model)."),
                ScheduleHandle.Input("schedule", optional=True,
                                     tooltip="Optional DynamicStepScheduler: replaces steps and sets the step cache."),
                ModelPatchInput.Input("model_patch", optional=True,
                                      tooltip="Optional SUPIR MODEL_PATCH from core's ModelPatchLoader (a SUPIR file "
                                              "in models/model_patches, ComfyUI with core SUPIR): its control "
                                              "network, connectors and denoise encoder run as they are, nothing of "
                                              "SUPIR is loaded again (LoadRSVLModels' supir_model is not read). "
                                              "Needs model and vae."),
            ],
            outputs=[io.Image.Output(display_name="image", is_output_list=True,
                                     tooltip="The refined images, one batch per input batch (a list like the "
                                             "input's; one batch in a one-image graph)."),
                     io.String.Output(display_name="report", tooltip="Computed / reused steps per image.")],
        )


    @classmethod
    def execute(cls, image, refiner, caption, steps, seed, schedule=None, model=None, clip=None, vae=None,
                model_patch=None, **settings) -> io.NodeOutput:
        """Inputs arrive as lists (`is_input_list`): batches of images, captions, and one value per widget."""
        with user_errors(cls.label()):
            batches = [to_bchw(b) for b in as_list(image)]
            refiner, steps, seed = first(refiner), first(steps), first(seed)
            schedule = first(schedule) if schedule is not None else None
            options = refine_options(schedule, steps=steps, seed=seed,
                                     **{name: first(value) for name, value in settings.items()})
            captions = pair_captions(as_list(caption), sum(b.shape[0] for b in batches))
            prompts = [*(positive_prompt(c, options) for c in captions), options.negative_prompt]
            source, weights = refine_source(HOST, refiner, *(first(x) if x is not None else None
                                                             for x in (model, clip, vae, model_patch)), prompts)
            outputs, lines = [], []
            for pixels in batches:
                done = len(lines)  # image k of the whole input gets seed + k (a repeated batch gives N samples)
                run = run_refine(source, pixels, captions[done:done + pixels.shape[0]], options, seed + done,
                                 ProgressReporter(HOST), free_memory=HOST.free_ram(), previews=HOST.previews)
                lines += [describe_refine_run(done + k, report, options, schedule, steps)
                          for k, report in enumerate(run.reports)]
                outputs.append(to_bhwc(run.images, HOST.intermediate_device()))
            for line in lines:
                log.info("rsvl refine %s", line)
            lines += weights[-1:] + [line for line in [refiner.options.get("memory_plan")] if line]
            text = "\n".join(lines)
            return io.NodeOutput(outputs, text, ui=ui.PreviewText(text))
