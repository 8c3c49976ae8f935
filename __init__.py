"""ComfyUI entry point of the rsvl node pack (V3 schema: `comfy_entrypoint`).

ComfyUI imports this file by path, so only relative imports are used. The nodes themselves land
with the node-pack issue; until then the extension registers no nodes, and importing this file
outside ComfyUI is harmless.
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
