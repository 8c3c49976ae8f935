"""ComfyUI nodes: rsvl's node pack over `rsvl_core` (one registration form: V3); not yet thin, see comfy_nodes.

`comfy_nodes` imports ComfyUI's modules, so it is imported only when ComfyUI asks for the extension;
`logic` holds the node logic and is tested without ComfyUI.
"""

from __future__ import annotations

NODE_IDS = ("LoadRSVLModels", "Stage1FidelitySR", "LlavaRSCaption", "ControlNetRefine", "DynamicStepScheduler",
            "RSVLUncertainty")


async def comfy_entrypoint():
    """Return the ComfyExtension ComfyUI asks for (only callable inside ComfyUI)."""
    from .comfy_nodes import RSVLExtension

    return RSVLExtension()
