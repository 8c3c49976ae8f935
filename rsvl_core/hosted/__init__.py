"""Models that a host application owns, run by our stages: placement through the host's memory manager, model
handles that load on first use, our refiner over the host's SDXL weights (its MODEL / CLIP / VAE, core SUPIR
patches, dynamic VRAM views), the host's model folders, and the settings its nodes carry.

A host reaches this package as an object (`handles.Host`); nothing here imports ComfyUI. The node pack (`nodes/`)
is the ComfyUI face over it.
"""
