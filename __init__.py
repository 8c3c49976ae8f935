"""ComfyUI entry point of the rsvl node pack (V3 schema: `comfy_entrypoint`).

ComfyUI imports this file by path, so only relative imports are used. Importing it outside ComfyUI is
harmless: ComfyUI's modules are imported only when `comfy_entrypoint` is called.
"""

# ComfyUI imports the pack as a package. pytest imports this file as the repository root's package too;
# when the checkout folder's name is not a Python identifier (e.g. a temp dir "tmp.x1y2") it becomes a
# plain module with no package, where a relative import cannot work and there is nothing to register.
if __package__:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

# The frontend extension (web/rsvl_nodes.js): shows the caption, the refine report and what stage 1 ran on
# the nodes, and marks the widgets a connected DynamicStepScheduler replaces.
WEB_DIRECTORY = "./web"
