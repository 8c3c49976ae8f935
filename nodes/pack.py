"""The pack as ComfyUI loads it: the node list (one line per node) and what happens once at start-up."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..rsvl_core.hosted.folders import provide_sample, register_model_folders
from ..rsvl_core.hosted.scene_files import SAMPLE_SCENE, SAMPLE_SCENE_SOURCE
from .caption import LlavaRSCaption
from .host import folder_paths
from .models import LoadRSVLModels
from .refine import ControlNetRefine
from .scene_files import RSVLLoadScene, RSVLSaveGeoTIFF
from .scene_upscale import RSVLUpscaleScene
from .schedule import DynamicStepScheduler
from .stage1 import Stage1FidelitySR
from .uncertainty import RSVLUncertainty

NODE_CLASSES = [LoadRSVLModels, Stage1FidelitySR, LlavaRSCaption, ControlNetRefine, DynamicStepScheduler,
                RSVLUncertainty, RSVLLoadScene, RSVLSaveGeoTIFF, RSVLUpscaleScene]


class RSVLExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


register_model_folders(folder_paths())
provide_sample(folder_paths().get_input_directory())
provide_sample(folder_paths().get_input_directory(), SAMPLE_SCENE_SOURCE, SAMPLE_SCENE)
