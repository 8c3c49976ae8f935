"""ComfyUI entry point of the rsvl node pack (V3 schema: `comfy_entrypoint`).

ComfyUI imports this file by path, so only relative imports are used. Importing it outside ComfyUI is
harmless: ComfyUI's modules are imported only when `comfy_entrypoint` is called.
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
