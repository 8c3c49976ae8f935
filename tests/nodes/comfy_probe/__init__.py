"""A test-only ComfyUI node pack (loaded beside rsvl by the host tests through COMFY_EXTRA_PACKS, never shipped):
an upscale model that runs out of memory on large inputs, to drive the out-of-memory retry in a real ComfyUI; and
core's own SUPIR classes as a MODEL_PATCH at a test file's size (core's ModelPatchLoader builds only the full
SDXL size), for ControlNetRefine's model_patch input."""

from __future__ import annotations

import copy

import torch


class OutOfMemoryAbove(torch.nn.Module):
    """`model`, except that an input with more than `max_pixels` pixels raises torch's out-of-memory error."""

    def __init__(self, model: torch.nn.Module, max_pixels: int) -> None:
        super().__init__()
        self.inner, self.max_pixels = model, max_pixels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] * image.shape[-1] > self.max_pixels:
            raise torch.cuda.OutOfMemoryError(f"out of memory (injected: {tuple(image.shape)} is more than "
                                              f"{self.max_pixels} pixels)")
        return self.inner(image)


class RsvlTestOutOfMemoryAbove:
    """UPSCALE_MODEL in -> the same model that fails with out-of-memory on inputs over `max_pixels` pixels."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"upscale_model": ("UPSCALE_MODEL",),
                             "max_pixels": ("INT", {"default": 2304, "min": 1, "max": 1 << 30})}}

    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "wrap"
    CATEGORY = "testing"

    def wrap(self, upscale_model, max_pixels):
        wrapped = copy.copy(upscale_model)
        wrapped._model = OutOfMemoryAbove(upscale_model.model, max_pixels)
        return (wrapped,)


class RsvlTestCoreSupirPatch:
    """A SUPIR file (any size) -> the MODEL_PATCH core's ModelPatchLoader would give for it, built from core's
    own classes (see core_supir.py). ComfyUI >= 0.20 only (comfy.ldm.supir)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL_PATCH",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, path):
        from .core_supir import core_supir_patch

        return (core_supir_patch(path),)


NODE_CLASS_MAPPINGS = {"RsvlTestOutOfMemoryAbove": RsvlTestOutOfMemoryAbove,
                       "RsvlTestCoreSupirPatch": RsvlTestCoreSupirPatch}
