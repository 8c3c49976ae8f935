"""What every rsvl node shares: inputs generated from the engine's settings, the custom socket types, display
names and search words, and how a node names itself in errors."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from comfy_api.latest import io

from ..rsvl_core.hosted.settings import NODE_SCENE_SETTINGS, NODE_SETTINGS, node_label
from ..rsvl_core.pipeline import SETTINGS
from ..rsvl_core.pipeline.options import SCENE_SETTINGS

CATEGORY = "RSVL"


def setting_input(name: str, node_id: str, tooltip: str | None = None, **overrides: Any) -> io.Input:
    """The node input `name` of `node_id`, generated from the engine setting it carries (NODE_SETTINGS):
    COMBO for choices, INT / FLOAT with the setting's range, STRING (multi-line) for text."""
    setting = NODE_SETTINGS.get(node_id, {}).get(name) or NODE_SCENE_SETTINGS[node_id][name]
    spec = SETTINGS[setting] if setting in SETTINGS else SCENE_SETTINGS[setting]
    tip = tooltip or spec.help[0].upper() + spec.help[1:] + "."
    if spec.kind is bool:
        return io.Boolean.Input(name, default=overrides.pop("default", spec.default), tooltip=tip, **overrides)
    if spec.choices is not None:
        options = overrides.pop("options", [str(c) for c in spec.choices])
        return io.Combo.Input(name, options=options, default=overrides.pop("default", str(spec.default)),
                              tooltip=tip, **overrides)
    if spec.kind is int:
        return io.Int.Input(name, default=overrides.pop("default", spec.default), min=int(spec.min),
                            max=int(spec.max), step=int(spec.step), tooltip=tip, **overrides)
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
SceneGeoHandle = io.Custom("RSVL_GEO")  # where a scene lies and how it was read (RSVLLoadScene)
# core's MODEL_PATCH socket (ModelPatchLoader): io.ModelPatch where comfy_api has it, io.MODEL_PATCH in older builds,
# else the same socket type by name; detected, never by version
ModelPatchInput = getattr(io, "ModelPatch", None) or getattr(io, "MODEL_PATCH", None) or io.Custom("MODEL_PATCH")



def seed_input(node_id: str, tooltip: str | None = None):
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
    "RSVLLoadScene": "RSVL Load Scene (GeoTIFF, JPEG 2000, VRT)",
    "RSVLSaveGeoTIFF": "RSVL Save GeoTIFF (COG, 16-bit)",
    "RSVLUpscaleScene": "RSVL Upscale Scene: large GeoTIFF in windows (file to file)",
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
    "RSVLLoadScene": ["load geotiff", "geotiff", "satellite", "raster", "scene", "multispectral", "rsvl"],
    "RSVLSaveGeoTIFF": ["save geotiff", "geotiff", "cog", "16-bit", "save image", "georeferenced", "rsvl"],
    "RSVLUpscaleScene": ["upscale scene", "large image", "geotiff", "windows", "tiled upscale", "super resolution",
                         "satellite", "aerial", "remote sensing", "rsvl"],
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


def node_schema(node_id: str, hidden: tuple = (), **fields) -> io.Schema:
    """io.Schema with our display name, category and search aliases (`hidden`: more than the node's id)."""
    return schema_class()(node_id=node_id, display_name=DISPLAY_NAMES[node_id], category=CATEGORY,
                          hidden=[io.Hidden.unique_id, *hidden], search_aliases=SEARCH_ALIASES[node_id], **fields)


class RSVLNode(io.ComfyNode):
    """Our nodes' common part: how errors name the node (display name and graph id, never the class name)."""

    NODE_ID = ""

    @classmethod
    def label(cls) -> str:
        hidden = getattr(cls, "hidden", None)
        return node_label(DISPLAY_NAMES[cls.NODE_ID], getattr(hidden, "unique_id", None))

    @classmethod
    def unique_id(cls) -> str | None:
        return getattr(getattr(cls, "hidden", None), "unique_id", None)

