"""LoadRSVLModels: the SR3 / upscale, captioner and refiner files, as handles that load on first use."""

from __future__ import annotations

import os

from comfy_api.latest import io

from ..rsvl_core.hosted import folders
from ..rsvl_core.hosted.folders import FOLDERS
from ..rsvl_core.hosted.handles import (
    ModelHandle,
    load_captioner_model,
    load_refiner_model,
    load_stage1_model,
    node_memory_plan,
)
from ..rsvl_core.kit.devices import DTYPE_CHOICES
from ..rsvl_core.kit.errors import RsvlError
from .host import HOST, NodeError, folder_paths, user_errors
from .schema import CaptionerHandle, RefinerHandle, RSVLNode, SR3Handle, node_schema, setting_input

NONE = "none"
DEVICES = ("auto", "cpu")


class LoadRSVLModels(RSVLNode):
    NODE_ID = "LoadRSVLModels"

    @classmethod
    def define_schema(cls) -> io.Schema:
        fp = folder_paths()
        return node_schema(
            "LoadRSVLModels",
            description="Choose the SR3, captioner and refiner weights. Nothing is loaded here: each model loads on "
                        "first use by the node that needs it, and ComfyUI's memory manager moves and frees it."
                        + (" This ComfyUI also has core SUPIR nodes (SUPIRApply): SUPIR files in models/"
                           "model_patches are listed here too; the README says what this refiner adds."
                           if folders.host_has_core_supir() else ""),
            inputs=[
                io.Combo.Input("sr3_model", options=[NONE, *folders.stage1_choices(fp)], default=NONE,
                               tooltip="Stage-1 model: an SR3 generator checkpoint (*_gen.pth) in models/rsvl/sr3, or "
                                       "any single-image SR model from models/upscale_models (ESRGAN, SwinIR, HAT, "
                                       "DAT, ...; resampled to the chosen scale). 'none' = no stage 1."),
                io.Combo.Input("llava_model", options=[NONE, *folders.list_model_folders(fp, FOLDERS["captioner"])],
                               default=NONE, tooltip="LLaVA-NeXT model folder (Hugging Face layout) in "
                                                     "models/rsvl/llava/<name>/. 'none' = no captioner."),
                io.Combo.Input("llava_adapter",
                               options=[NONE, *folders.list_model_folders(fp, FOLDERS["caption-adapter"])],
                               default=NONE, tooltip="Optional remote-sensing LoRA adapter folder in "
                                                     "models/rsvl/llava_adapter/<name>/."),
                io.Combo.Input("sdxl_checkpoint", options=[NONE, *fp.get_filename_list(FOLDERS["sdxl"])], default=NONE,
                               tooltip="SDXL base single file from models/checkpoints (the refiner's base model)."),
                io.Combo.Input("supir_model", options=[NONE, *folders.supir_choices(fp)], default=NONE,
                               tooltip="SUPIR checkpoint (v0Q or v0F) in models/rsvl/supir or, as model_patches/"
                                       "<file>, where core ComfyUI keeps SUPIR files. With sdxl_checkpoint the "
                                       "pack loads the whole refiner; alone, ControlNetRefine runs it over the "
                                       "MODEL/CLIP/VAE of core's Load Checkpoint (only SUPIR's parts load)."),
                setting_input("dtype", "LoadRSVLModels", "Weight precision. auto: bf16 (or fp16) on a GPU, fp32 on "
                                                         "the CPU. The refiner's VAE never runs in fp16.",
                              options=list(DTYPE_CHOICES), default="auto"),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
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
        fp = folder_paths()
        if sdxl_checkpoint != NONE and supir_model == NONE:
            raise NodeError("the refiner needs both sdxl_checkpoint and supir_model (or neither; or supir_model "
                            "alone, with ControlNetRefine's model/clip/vae from core's Load Checkpoint)")
        if llava_adapter != NONE and llava_model == NONE:
            raise NodeError("llava_adapter needs a llava_model")
        return {
            "stage1": None if sr3_model == NONE else folders.find_stage1_file(fp, sr3_model),
            "llava": None if llava_model == NONE else folders.find_model_folder(fp, FOLDERS["captioner"], llava_model),
            "adapter": None if llava_adapter == NONE else folders.find_model_folder(fp, FOLDERS["caption-adapter"],
                                                                                 llava_adapter),
            "sdxl": None if sdxl_checkpoint == NONE else folders.find_model_file(fp, FOLDERS["sdxl"], sdxl_checkpoint),
            "supir": None if supir_model == NONE else folders.find_supir_file(fp, supir_model),
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
        with user_errors(cls.label()):
            paths = cls._paths(sr3_model, llava_model, llava_adapter, sdxl_checkpoint, supir_model)
            plan = node_memory_plan(max_vram, dtype)

            def handle(kind, keys, loader, **options):
                sources = {k: paths[k] for k in keys if paths[k]} if paths[keys[0]] else {}
                return ModelHandle(kind, sources, dtype, device, options, loader)

            load_device = HOST.torch_device(device)
            return io.NodeOutput(
                handle("stage-1", ["stage1"], load_stage1_model),
                handle("captioner", ["llava", "adapter"], load_captioner_model, quantization=llava_quantization,
                       load_device=load_device, storage=plan.get("storage", "none")),
                handle("refiner", ["supir", "sdxl"], load_refiner_model, fp8=plan.get("fp8", False),
                       memory_plan=plan.get("memory_plan")),
            )
