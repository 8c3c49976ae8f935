"""ComfyUI nodes: thin adapters from ComfyUI types to `rsvl_core` (one registration form: V3)."""

from __future__ import annotations

NODE_CLASSES: list = []  # filled in by the node-pack issue (LoadRSVLModels, Stage1FidelitySR, ...)


async def comfy_entrypoint():
    """Return the ComfyExtension ComfyUI asks for (only callable inside ComfyUI)."""
    from comfy_api.latest import ComfyExtension

    class RSVLExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return list(NODE_CLASSES)

    return RSVLExtension()
