"""ComfyUI nodes over `rsvl_core` (V3 schema): one file per feature, each node a schema and one call into the engine.
A new node is one file here and one line in `pack.NODE_CLASSES` (imported only when ComfyUI asks for the pack)."""

from __future__ import annotations

NODE_IDS = ("LoadRSVLModels", "Stage1FidelitySR", "LlavaRSCaption", "ControlNetRefine", "DynamicStepScheduler",
            "RSVLUncertainty", "RSVLLoadScene", "RSVLSaveGeoTIFF", "RSVLUpscaleScene")


async def comfy_entrypoint():
    """Return the ComfyExtension ComfyUI asks for (only callable inside ComfyUI)."""
    from .pack import RSVLExtension

    return RSVLExtension()
