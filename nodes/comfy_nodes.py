"""The rsvl nodes for ComfyUI (V3 schema): their schemas, the ComfyUI host, and each node's own run over `logic`.

Not thin yet: besides schemas and type conversion, the stage nodes run their own loops (image k of a batch gets
seed + k), guess the memory they ask ComfyUI for, and report progress and previews through `ComfyHost` (ComfyUI's
memory manager, progress bar, interrupt flag and devices). Loading, placement and option building live in
`logic.py`. Imported only by `comfy_entrypoint` (inside ComfyUI).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import torch
from comfy_api.latest import ComfyExtension, io, ui

from ..rsvl_core.errors import RsvlError
from ..rsvl_core.pipeline import SETTINGS
from ..rsvl_core.pipeline.components import positive_prompt, refine_image, working_size
from . import logic
from .logic import NONE, NodeError

log = logging.getLogger("rsvl")
CATEGORY = "RSVL"
FOLDER = logic.FOLDERS  # the engine's stage table: weights kind -> ComfyUI model folder


def setting_input(name: str, node_id: str, tooltip: str | None = None, **overrides: Any) -> io.Input:
    """The node input `name` of `node_id`, generated from the engine setting it carries (logic.NODE_SETTINGS):
    COMBO for choices, INT / FLOAT with the setting's range, STRING (multi-line) for text."""
    spec = SETTINGS[logic.NODE_SETTINGS[node_id][name]]
    tip = tooltip or spec.help[0].upper() + spec.help[1:] + "."
    if spec.choices is not None:
        options = overrides.pop("options", [str(c) for c in spec.choices])
        return io.Combo.Input(name, options=options, default=overrides.pop("default", str(spec.default)),
                              tooltip=tip, **overrides)
    if spec.kind is int:
        return io.Int.Input(name, default=spec.default, min=int(spec.min), max=int(spec.max), step=int(spec.step),
                            tooltip=tip, **overrides)
    if spec.kind is float:
        return io.Float.Input(name, default=spec.default, min=spec.min, max=spec.max, step=spec.step, tooltip=tip,
                              **overrides)
    return io.String.Input(name, default=spec.default, multiline=overrides.pop("multiline", True), tooltip=tip,
                           **overrides)


# The model handles travel between nodes as custom socket types, declared once.
SR3Handle = io.Custom("RSVL_SR3")
CaptionerHandle = io.Custom("RSVL_CAPTIONER")
RefinerHandle = io.Custom("RSVL_REFINER")
ScheduleHandle = io.Custom("RSVL_SCHEDULE")
# core's MODEL_PATCH socket (ModelPatchLoader): io.ModelPatch where comfy_api has it, io.MODEL_PATCH in older builds,
# else the same socket type by name; detected, never by version
ModelPatchInput = getattr(io, "ModelPatch", None) or getattr(io, "MODEL_PATCH", None) or io.Custom("MODEL_PATCH")


class ComfyHost:
    """logic.Host backed by ComfyUI: its memory manager, progress bar, interrupt flag and devices."""

    @property
    def preview_size(self) -> int:
        from comfy.cli_args import args

        return int(getattr(args, "preview_size", 512) or 512)

    @property
    def previews(self) -> bool:
        """Whether step previews are wanted: ComfyUI's preview method (--preview-method, or the one the
        frontend sends with a prompt) is not "none", as for core's samplers."""
        from comfy.cli_args import args

        method = getattr(args, "preview_method", "none")
        return str(getattr(method, "value", method)) != "none"

    def torch_device(self, choice: str) -> torch.device:
        import comfy.model_management as mm

        return torch.device("cpu") if choice == "cpu" else mm.get_torch_device()

    def offload_device(self, choice: str) -> torch.device:
        import comfy.model_management as mm

        return torch.device("cpu") if choice == "cpu" else mm.unet_offload_device()

    def register(self, module: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
        """A classic ModelPatcher, never CoreModelPatcher (ComfyUI's dynamic-VRAM patcher where comfy-aimdo is on):
        our modules are plain torch layers, which a dynamic patcher would move whole anyway, and it refuses the full
        load `load` asks for (nodes/dynamic_vram.py)."""
        from comfy.model_patcher import ModelPatcher

        return ModelPatcher(module, load_device=load_device, offload_device=offload_device)

    def load(self, patchers: list, memory_required: int = 0) -> None:
        import comfy.model_management as mm

        # Our modules are plain torch modules (no comfy.ops weight casting): load them whole. A dynamic patcher of
        # core's in the list (MODEL_PATCH) is loaded its own way: force_full_load never reaches its load().
        mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)

    def progress_bar(self, total: int):
        import comfy.utils

        return comfy.utils.ProgressBar(total)

    def check_interrupt(self) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()

    def intermediate_device(self) -> torch.device:
        import comfy.model_management as mm

        return mm.intermediate_device()

    def free_ram(self) -> int | None:
        """Free system memory in bytes, as ComfyUI's memory manager sees it (None if it cannot tell)."""
        import comfy.model_management as mm

        try:
            return int(mm.get_free_memory(torch.device("cpu")))
        except Exception:  # an estimate only: never fail a run for it
            return None

    def send_text(self, node_id: str | None, text: str) -> None:
        """Show `text` on the node while it runs (progress_text: the frontend shows it in its own overlay)."""
        if node_id is None:
            return
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(text, node_id)
        except (ImportError, AttributeError):  # no server (tests of the node logic)
            pass


HOST = ComfyHost()


def _folder_paths():
    import folder_paths

    return folder_paths


def _seed(node_id: str, tooltip: str | None = None):
    return setting_input("seed", node_id, tooltip, control_after_generate=True)


# Display names and the words users search the node library with. Frontends find a node by a word only near the
# start of its id or display name (fuzzy match, threshold 0.3, distance 100: about the first 30 characters), and
# ComfyUI 0.8's bundled frontend (1.35.9) searches nothing else. So the two stages open with what users type
# ("Upscale ... aerial/satellite ... SR3", "Super Resolution ... SUPIR"); newer frontends (1.58+) also search
# `search_aliases`, which are sent too (through the schema where it has the field, else added to the node info).
DISPLAY_NAMES = {
    "LoadRSVLModels": "RSVL Load Models",
    "Stage1FidelitySR": "Upscale Aerial/Satellite: SR3 (RSVL stage 1)",
    "LlavaRSCaption": "RSVL Caption: remote sensing (LLaVA)",
    "ControlNetRefine": "Super Resolution Refine: SUPIR (RSVL stage 2)",
    "DynamicStepScheduler": "RSVL Dynamic Step Scheduler",
    "RSVLUncertainty": "RSVL Uncertainty: where to trust the pixels (N samples, guard)",
}
SEARCH_ALIASES = {
    "LoadRSVLModels": ["rsvl", "super resolution models", "upscale models", "sr3", "supir", "llava"],
    "Stage1FidelitySR": ["super resolution", "upscale", "upscaler", "sr3", "remote sensing", "satellite", "aerial",
                         "rsvl"],
    "LlavaRSCaption": ["caption", "vlm", "llava", "describe image", "remote sensing", "satellite", "aerial", "rsvl"],
    "ControlNetRefine": ["super resolution", "upscale", "refine", "supir", "sdxl", "restore", "remote sensing",
                         "satellite", "aerial", "rsvl"],
    "DynamicStepScheduler": ["steps", "cache", "scheduler", "speed up", "rsvl"],
    "RSVLUncertainty": ["uncertainty", "hallucination", "guard", "std map", "confidence", "samples", "rsvl"],
}


@functools.cache
def schema_class() -> type:
    """io.Schema where it takes `search_aliases`; on ComfyUI 0.8, whose schema has no such field, a subclass whose
    node info carries them anyway, so a newer frontend served by it (1.58 through --front-end-root) searches them."""
    if "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {}) or not hasattr(io, "NodeInfoV1"):
        return io.Schema

    @dataclasses.dataclass
    class NodeInfoWithAliases(io.NodeInfoV1):
        search_aliases: list[str] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass
    class SchemaWithAliases(io.Schema):
        search_aliases: list[str] = dataclasses.field(default_factory=list)

        def get_v1_info(self, cls) -> NodeInfoWithAliases:
            info = super().get_v1_info(cls)
            return NodeInfoWithAliases(**dataclasses.asdict(info), search_aliases=list(self.search_aliases))

    return SchemaWithAliases


def _schema(node_id: str, **fields) -> io.Schema:
    """io.Schema with our display name, category and search aliases."""
    return schema_class()(node_id=node_id, display_name=DISPLAY_NAMES[node_id], category=CATEGORY,
                          hidden=[io.Hidden.unique_id], search_aliases=SEARCH_ALIASES[node_id], **fields)


class RSVLNode(io.ComfyNode):
    """Our nodes' common part: how errors name the node (display name and graph id, never the class name)."""

    NODE_ID = ""

    @classmethod
    def label(cls) -> str:
        hidden = getattr(cls, "hidden", None)
        return logic.node_label(DISPLAY_NAMES[cls.NODE_ID], getattr(hidden, "unique_id", None))

    @classmethod
    def unique_id(cls) -> str | None:
        return getattr(getattr(cls, "hidden", None), "unique_id", None)


class LoadRSVLModels(RSVLNode):
    NODE_ID = "LoadRSVLModels"

    @classmethod
    def define_schema(cls) -> io.Schema:
        fp = _folder_paths()
        return _schema(
            "LoadRSVLModels",
            description="Choose the SR3, captioner and refiner weights. Nothing is loaded here: each model loads on "
                        "first use by the node that needs it, and ComfyUI's memory manager moves and frees it."
                        + (" This ComfyUI also has core SUPIR nodes (SUPIRApply): SUPIR files in models/"
                           "model_patches are listed here too; the README says what this refiner adds."
                           if logic.host_has_core_supir() else ""),
            inputs=[
                io.Combo.Input("sr3_model", options=[NONE, *logic.stage1_choices(fp)], default=NONE,
                               tooltip="Stage-1 model: an SR3 generator checkpoint (*_gen.pth) in models/rsvl/sr3, or "
                                       "any single-image SR model from models/upscale_models (ESRGAN, SwinIR, HAT, "
                                       "DAT, ...; resampled to the chosen scale). 'none' = no stage 1."),
                io.Combo.Input("llava_model", options=[NONE, *logic.list_model_folders(fp, FOLDER["captioner"])],
                               default=NONE, tooltip="LLaVA-NeXT model folder (Hugging Face layout) in "
                                                     "models/rsvl/llava/<name>/. 'none' = no captioner."),
                io.Combo.Input("llava_adapter",
                               options=[NONE, *logic.list_model_folders(fp, FOLDER["caption-adapter"])],
                               default=NONE, tooltip="Optional remote-sensing LoRA adapter folder in "
                                                     "models/rsvl/llava_adapter/<name>/."),
                io.Combo.Input("sdxl_checkpoint", options=[NONE, *fp.get_filename_list(FOLDER["sdxl"])], default=NONE,
                               tooltip="SDXL base single file from models/checkpoints (the refiner's base model)."),
                io.Combo.Input("supir_model", options=[NONE, *logic.supir_choices(fp)], default=NONE,
                               tooltip="SUPIR checkpoint (v0Q or v0F) in models/rsvl/supir or, as model_patches/"
                                       "<file>, where core ComfyUI keeps SUPIR files. With sdxl_checkpoint the "
                                       "pack loads the whole refiner; alone, ControlNetRefine runs it over the "
                                       "MODEL/CLIP/VAE of core's Load Checkpoint (only SUPIR's parts load)."),
                setting_input("dtype", "LoadRSVLModels", "Weight precision. auto: bf16 (or fp16) on a GPU, fp32 on "
                                                         "the CPU. The refiner's VAE never runs in fp16.",
                              options=list(logic.DTYPES), default="auto"),
                io.Combo.Input("device", options=list(logic.DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device, offloaded by its memory manager; cpu: always CPU."),
                io.Combo.Input("llava_quantization", options=["none", "8bit", "4bit"], default="none",
                               tooltip="8/4-bit captioner (needs bitsandbytes and CUDA; not moved by ComfyUI)."),
                setting_input("max_vram", "LoadRSVLModels", "GPU memory budget, e.g. 12G or 8G: stores the "
                              "captioner (fp8 / int4) and the refiner (fp8) so the predicted peak fits; the "
                              "refine report shows the plan. Empty = as loaded.", multiline=False, optional=True),
            ],
            outputs=[
                SR3Handle.Output(display_name="sr3", tooltip="stage-1 model (SR3 or an upscale model) for "
                                                             "Stage1FidelitySR"),
                CaptionerHandle.Output(display_name="captioner", tooltip="captioner for LlavaRSCaption"),
                RefinerHandle.Output(display_name="refiner", tooltip="SDXL + SUPIR refiner for ControlNetRefine"),
            ],
        )

    @classmethod
    def _paths(cls, sr3_model, llava_model, llava_adapter, sdxl_checkpoint, supir_model) -> dict[str, str | None]:
        fp = _folder_paths()
        if sdxl_checkpoint != NONE and supir_model == NONE:
            raise NodeError("the refiner needs both sdxl_checkpoint and supir_model (or neither; or supir_model "
                            "alone, with ControlNetRefine's model/clip/vae from core's Load Checkpoint)")
        if llava_adapter != NONE and llava_model == NONE:
            raise NodeError("llava_adapter needs a llava_model")
        return {
            "stage1": None if sr3_model == NONE else logic.find_stage1_file(fp, sr3_model),
            "llava": None if llava_model == NONE else logic.find_model_folder(fp, FOLDER["captioner"], llava_model),
            "adapter": None if llava_adapter == NONE else logic.find_model_folder(fp, FOLDER["caption-adapter"],
                                                                                 llava_adapter),
            "sdxl": None if sdxl_checkpoint == NONE else logic.find_model_file(fp, FOLDER["sdxl"], sdxl_checkpoint),
            "supir": None if supir_model == NONE else logic.find_supir_file(fp, supir_model),
        }

    @classmethod
    def fingerprint_inputs(cls, sr3_model, llava_model, llava_adapter, sdxl_checkpoint, supir_model, **_):
        """Re-run (and so reload lazily) when a chosen file changes on disk."""
        try:
            paths = cls._paths(sr3_model, llava_model, llava_adapter, sdxl_checkpoint, supir_model)
        except (RsvlError, FileNotFoundError):
            return None
        return tuple((p, os.path.getmtime(p)) for p in paths.values() if p)

    @classmethod
    def execute(cls, sr3_model, llava_model, llava_adapter, sdxl_checkpoint, supir_model, dtype, device,
                llava_quantization, max_vram="") -> io.NodeOutput:
        with logic.user_errors(cls.label()):
            paths = cls._paths(sr3_model, llava_model, llava_adapter, sdxl_checkpoint, supir_model)
            plan = logic.node_memory_plan(max_vram, dtype)

            def handle(kind, keys, loader, **options):
                sources = {k: paths[k] for k in keys if paths[k]} if paths[keys[0]] else {}
                return logic.ModelHandle(kind, sources, dtype, device, options, loader)

            load_device = HOST.torch_device(device)
            return io.NodeOutput(
                handle("stage-1", ["stage1"], logic.load_stage1_model),
                handle("captioner", ["llava", "adapter"], logic.load_captioner_model, quantization=llava_quantization,
                       load_device=load_device, storage=plan.get("storage", "none")),
                handle("refiner", ["supir", "sdxl"], logic.load_refiner_model, fp8=plan.get("fp8", False),
                       memory_plan=plan.get("memory_plan")),
            )


class DynamicStepScheduler(RSVLNode):
    NODE_ID = "DynamicStepScheduler"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return _schema(
            node,
            description="Steps and step cache for both stages. Connect it to Stage1FidelitySR and/or "
                        "ControlNetRefine; the refine node reports which steps were computed and which reused.",
            inputs=[
                setting_input("cache_preset", node, "Refiner step cache. off: every step computed; seed: the seed's "
                                                  "adaptive cache; fast: ours (first block signal, fixed threshold, "
                                                  "guarded)."),
                setting_input("refine_steps", node, "Refiner sampling steps (replaces ControlNetRefine's steps)."),
                setting_input("cache_threshold", node, "Reuse a step when the relative change is below this. "
                                                     "0 = the preset's own (seed 0.3, fast 0.2)."),
                setting_input("stage1_sampler", node),
                setting_input("stage1_steps", node),
                setting_input("stage1_cache", node),
            ],
            outputs=[ScheduleHandle.Output(display_name="schedule")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        with logic.user_errors(cls.label()):
            return io.NodeOutput(logic.scheduler_from_inputs(**inputs))


class Stage1FidelitySR(RSVLNode):
    NODE_ID = "Stage1FidelitySR"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return _schema(
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
                _seed(node, "SR3 noise seed; image k of a batch uses seed + k (a repeated image gives N samples, "
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
        with the typed values (see logic.stage1_settings_problem for what is left to the run)."""
        problem = logic.stage1_settings_problem(tile_size, tile_overlap)
        return True if problem is None else f"{cls.label()}: {problem}"

    @classmethod
    def execute(cls, image, scale, sampler, steps, seed, tile_size, tile_overlap, tile_batch=None, schedule=None,
                sr3=None, upscale_model=None) -> io.NodeOutput:
        label = cls.label()
        with logic.user_errors(label):
            if (sr3 is None) == (upscale_model is None):
                raise NodeError("connect either sr3 (LoadRSVLModels) or upscale_model (Load Upscale Model), "
                                + ("not both" if sr3 is not None else "none is connected"))
            options = logic.stage1_options(schedule, sampler=sampler, steps=steps, tile_size=tile_size,
                                          tile_overlap=tile_overlap, tile_batch=tile_batch)
            pixels = logic.to_bchw(image)
            batch, _, height, width = pixels.shape
            factor = int(scale)
            logic.size_guard(label, batch, height, width, height * factor, width * factor, logic.STAGE1_BUFFERS,
                            HOST.free_ram(), f"x{factor}", tiles_off=options.tile_size == 0)
            if upscale_model is not None:
                model = logic.upscale_model_stage(HOST, upscale_model, pixels)
            else:
                memory = options.tile_batch * max(options.tile_size or 512, 64) ** 2 * 3 * 4 * 64
                model = sr3.get(HOST, memory_required=memory)
            notes: list[str] = []
            node_id = cls.unique_id()

            def slow(seconds_left: float, step: int, total: int) -> None:
                if model.device.type != "cpu":
                    return
                per_step = (seconds_left / max(total - step, 1)) if total > step else 0.0
                line = logic.cpu_time_warning(label, seconds_left, total, per_step)
                if line:
                    log.warning("%s", line)
                    notes.append(line)
                    HOST.send_text(node_id, line)

            progress = logic.ProgressReporter(HOST, slow_warning=slow if model.kind == "sr3" else None)
            started = time.monotonic()
            try:
                if model.kind == "sr3":
                    # image k of a batch gets seed + k, as in ControlNetRefine and in the CLI's uncertainty samples:
                    # each image equals a one-image run with its seed (a repeated image gives the CLI's N samples)
                    runs = [model.upscale(pixels[k:k + 1], factor, options, seed + k,
                                          logic.batch_progress(progress, k, batch)) for k in range(batch)]
                    result = dataclasses.replace(runs[0], image=torch.cat([run.image for run in runs]))
                else:
                    result = model.upscale(pixels, factor, options, seed, progress)
            except BaseException:
                if notes:  # an estimate is on the node: replace it, or it stays after a Cancel
                    HOST.send_text(node_id, logic.cpu_time_end_note(label, time.monotonic() - started, False))
                raise
            if notes:
                HOST.send_text(node_id, logic.cpu_time_end_note(label, time.monotonic() - started, True))
            if model.kind == "sr3":
                ran = logic.describe_stage1_run(options, schedule, sampler, steps)
            else:
                ran = logic.describe_one_pass_run(result.record, factor)
            log.info("rsvl stage 1 %s", ran)
            text = "\n".join([ran, *notes])
            return io.NodeOutput(logic.to_bhwc(result.image, HOST.intermediate_device()), ui=ui.PreviewText(text))


class LlavaRSCaption(RSVLNode):
    NODE_ID = "LlavaRSCaption"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return _schema(
            node,
            description="Describes the image with the remote-sensing captioner. The caption is a STRING: edit it, "
                        "or feed ControlNetRefine any text node instead.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="Image to describe (usually the stage-1 output)."),
                CaptionerHandle.Input("captioner", tooltip="captioner output of LoadRSVLModels."),
                setting_input("prompt", node, "The instruction; <image> marks where the image goes (the start if "
                                              "absent). Default: the seed's analyst prompt."),
                setting_input("max_new_tokens", node),
                setting_input("temperature", node),
                _seed(node, "Makes the sampled caption reproducible."),
            ],
            outputs=[io.String.Output(display_name="caption", is_output_list=True,
                                      tooltip="One caption per image of the batch, as a list: ControlNetRefine pairs "
                                              "them with its images; a text node after it runs once per caption.")],
        )

    @classmethod
    def execute(cls, image, captioner, prompt, max_new_tokens, temperature, seed) -> io.NodeOutput:
        with logic.user_errors(cls.label()):
            options = logic.caption_options(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                           seed=seed)
            model = captioner.get(HOST)
            captions = model.caption(logic.to_bchw(image), options, callback=logic.ProgressReporter(HOST))
            return io.NodeOutput(list(captions), ui=ui.PreviewText(logic.captions_text(captions)))


class ControlNetRefine(RSVLNode):
    NODE_ID = "ControlNetRefine"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return _schema(
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
                _seed(node),
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
        label = cls.label()
        with logic.user_errors(label):
            batches = [logic.to_bchw(b) for b in logic.as_list(image)]
            refiner, steps, seed = logic.first(refiner), logic.first(steps), logic.first(seed)
            schedule = logic.first(schedule) if schedule is not None else None
            settings = {name: logic.first(value) for name, value in settings.items()}
            options = logic.refine_options(schedule, steps=steps, seed=seed, **settings)
            total = sum(b.shape[0] for b in batches)
            captions = logic.pair_captions(logic.as_list(caption), total)
            for pixels in batches:
                batch, _, height, width = pixels.shape
                work_h, work_w = working_size(height, width, options.min_size, options.size_unit)
                logic.size_guard(label, batch, height, width, work_h, work_w, logic.REFINE_BUFFERS,
                                HOST.free_ram(), f"working size for min_size {options.min_size}")
            tile = options.latent_tile_size or 128
            memory = 2 * tile * tile * 64 * 4 * 64
            model, clip, vae, model_patch = (logic.first(x) if x is not None else None
                                             for x in (model, clip, vae, model_patch))
            weights_line = None
            if model is not None:
                prompts = [*(positive_prompt(c, options) for c in captions), options.negative_prompt]
                model, weights_line = logic.refiner_over_host_sdxl(HOST, refiner, model, vae, clip,
                                                                   memory_required=memory, prompts=prompts,
                                                                   model_patch=model_patch)
            elif model_patch is not None:
                raise NodeError("model_patch is connected but model is not: SUPIR's parts run over an SDXL, connect "
                                "the MODEL and VAE of core's Load Checkpoint")
            elif clip is not None or vae is not None:
                raise NodeError("clip / vae are connected but model is not: connect the MODEL of the same Load "
                                "Checkpoint (or none of the three)")
            elif not refiner.sources.get("sdxl"):
                raise NodeError("the refiner has no SDXL: connect model, clip and vae from core's Load Checkpoint, "
                                "or choose sdxl_checkpoint in LoadRSVLModels")
            else:
                model = refiner.get(HOST, memory_required=memory)
            outputs, lines = [], []
            for pixels in batches:
                refined = []
                for index in range(pixels.shape[0]):
                    single = pixels[index:index + 1]
                    number = len(lines)
                    preview_map = logic.fit_latent_preview(model, single) if HOST.previews else None
                    progress = logic.ProgressReporter(HOST, preview_map)
                    # each image its own noise (seed + its number): a repeated batch gives N samples
                    # (RSVLUncertainty); the first image is the seed's run
                    result, report = refine_image(model, single, captions[number], options, seed=seed + number,
                                                  callback=progress)
                    line = logic.describe_refine_run(number, report, options, schedule, steps)
                    log.info("rsvl refine %s", line)
                    refined.append(result)
                    lines.append(line)
                outputs.append(logic.to_bhwc(torch.cat(refined), HOST.intermediate_device()))
            if weights_line is not None:
                log.info("rsvl refine %s", weights_line)
                lines.append(weights_line)
            if refiner.options.get("memory_plan"):
                lines.append(refiner.options["memory_plan"])
            text = "\n".join(lines)
            return io.NodeOutput(outputs, text, ui=ui.PreviewText(text))


class RSVLUncertainty(RSVLNode):
    NODE_ID = "RSVLUncertainty"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return _schema(
            node,
            description="Takes N samples of the same scene (an IMAGE batch: e.g. RepeatImageBatch before the stage "
                        "nodes, each element gets its own noise) and shows where they disagree: the combined image, "
                        "a heat map of the per-pixel std (8-bit levels) and a summary. With guard > 0, pixels whose "
                        "std exceeds it fall back to the stage-1 image (feathered).",
            is_output_node=True,
            inputs=[
                io.Image.Input("samples", tooltip="N >= 2 samples of one scene, as one IMAGE batch."),
                setting_input("combine", node),
                setting_input("guard", node),
                setting_input("feather", node),
                io.Image.Input("stage_1", optional=True,
                               tooltip="The stage-1 image of the scene: the guard's fallback (first of a batch)."),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Image.Output(display_name="uncertainty"),
                     io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, samples, combine, guard, feather, stage_1=None) -> io.NodeOutput:
        from .uncertainty import uncertainty_outputs

        with logic.user_errors(cls.label()):
            out = uncertainty_outputs(logic.to_bchw(samples), None if stage_1 is None else logic.to_bchw(stage_1),
                                      combine=combine, guard=guard, feather=feather)
            device = HOST.intermediate_device()
            return io.NodeOutput(logic.to_bhwc(out.image, device), logic.to_bhwc(out.heat_map, device), out.summary,
                                 ui=ui.PreviewText(out.summary))


NODE_CLASSES = [LoadRSVLModels, Stage1FidelitySR, LlavaRSCaption, ControlNetRefine, DynamicStepScheduler,
                RSVLUncertainty]


class RSVLExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


logic.register_model_folders(_folder_paths())
logic.provide_sample(_folder_paths().get_input_directory())
