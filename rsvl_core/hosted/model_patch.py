"""Core ComfyUI's SUPIR MODEL_PATCH as the refiner's SUPIR parts: the file is read once, by core.

ComfyUI >= 0.20 loads a SUPIR checkpoint from models/model_patches with its ModelPatchLoader: a MODEL_PATCH (a
ModelPatcher) whose `.model` holds `control_model` (core's GLVControl), `project_modules` (core's ZeroSFT /
ZeroCrossAttn, in checkpoint order) and `denoise_encoder_sd` (the denoise encoder's tensors). ControlNetRefine's
`model_patch` input runs our refiner with those very modules: this file adapts their calls to the ones
`rsvl_core.refine` makes, and ComfyUI's memory manager keeps owning their weights (the patch is loaded with
`load_models_gpu`, as core's SUPIRApply loads it through its model patch).

Only the patch's attributes are used, never a ComfyUI import, so this also runs outside ComfyUI.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..pipeline.components import SupirParts, supir_parts_over

# the SUPIR parts built over each patch's modules, dropped with the patch's model when ComfyUI lets it go
_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CoreControl:
    """Core's GLVControl with our control network's call.

    Ours: (hint, sample, timestep, encoder_hidden_states, y); core's: (hint, timesteps, xt, context, y). Inputs
    are cast to `dtype` (the host UNet's, the precision our own control network would compute in); core's
    layers (comfy.ops.manual_cast) cast their weights to it in turn, so the weights stay as core holds them.
    """

    def __init__(self, glv_control: torch.nn.Module, dtype: torch.dtype) -> None:
        self.glv_control, self.dtype = glv_control, dtype

    def __call__(self, hint: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        dtype = self.dtype
        return self.glv_control(hint.to(dtype), timestep, sample.to(dtype), encoder_hidden_states.to(dtype),
                                y.to(dtype))


def supir_module(model_patch: Any) -> Any:
    """The SUPIR module of a core MODEL_PATCH (its `.model`), or None when the patch is another kind (ModelPatchLoader
    also loads Qwen / Z-Image / USO patches, which have no control network)."""
    module = getattr(model_patch, "model", None)
    if all(hasattr(module, name) for name in ("control_model", "project_modules")):
        return module
    return None


def describe_patch(model_patch: Any) -> str:
    """A short name for messages: the patch's module class."""
    return type(getattr(model_patch, "model", model_patch)).__name__


def supir_parts_from_patch(model_patch: Any, unet_ldm: dict[str, torch.Tensor], vae_ldm: dict[str, torch.Tensor]
                           ) -> SupirParts:
    """Our refiner's SUPIR parts over a core SUPIR MODEL_PATCH (built once per patch, then reused).

    The connectors are core's modules as they are: their calls are ours (ZeroSFT (control, skip, decoder,
    control_scale), ZeroCrossAttn (control, h, control_scale)); the control network is wrapped (`CoreControl`);
    the denoise encoder is our module over the patch's `denoise_encoder_sd` tensors.
    Raises ValueError when the patch is not SUPIR or has no denoise encoder.
    """
    module = supir_module(model_patch)
    if module is None:
        raise ValueError(f"model_patch: expected a SUPIR model patch (core's Load Model Patch with a SUPIR file from "
                         f"models/model_patches), got {describe_patch(model_patch)}")
    dtype = next(v.dtype for v in unet_ldm.values() if v.is_floating_point())
    parts = _PARTS.get(module)
    if parts is None or parts.control.dtype != dtype:  # built once per patch (again for a UNet of another dtype)
        denoise = getattr(module, "denoise_encoder_sd", None)
        if not denoise:
            raise ValueError("model_patch: this SUPIR patch has no denoise encoder (first_stage_model."
                             "denoise_encoder.* in its file); the refiner encodes the image with it")
        parts = supir_parts_over(CoreControl(module.control_model, dtype), module.project_modules, denoise,
                                 unet_ldm, vae_ldm, f"model_patch ({describe_patch(model_patch)})")
        _PARTS[module] = parts
    return parts
