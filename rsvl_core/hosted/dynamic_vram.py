"""Core's weights under ComfyUI's dynamic VRAM, for the modules of ours that compute with them.

Where comfy-aimdo works (ComfyUI 0.20.1: NVIDIA, or `--enable-dynamic-vram`), ComfyUI's main.py makes
`comfy.model_patcher.CoreModelPatcher` its `ModelPatcherDynamic` (on a CPU load device it is a classic patcher
still). Core's loaders then load MODEL, VAE, CLIP and MODEL_PATCH weights with `assign=True` and leave them on the
offload device (CPU, often memory-mapped); `load_models_gpu` only prepares comfy.ops layers to cast each weight
onto the GPU per op (applying LoRAs there, per op) and moves whole only parameters of layers that are not
comfy.ops. Core's MODEL / VAE tensors thus stay on the CPU, unpatched, however often they are "loaded". What each
place that touches a host patcher does (told by `is_dynamic()`, never by version):

- Our own modules (HostPlacement's stages, the upscale model we place): always a classic `ModelPatcher`
  (ComfyHost.register, never CoreModelPatcher). They are plain torch layers, no comfy.ops casting: a dynamic
  patcher would move them whole anyway (its load moves every non-comfy.ops parameter) while refusing the full
  load we ask for. Classic: one VRAM copy while loaded, offloaded by ComfyUI like any model.
- Core's MODEL and VAE, whose tensors our refiner computes with (its diffusers-layout modules take them by
  assignment): when dynamic, the refiner is built over a *view* of them (`HostView`): a bare module tree with the
  same names whose Parameters share core's storage, in a classic patcher of ours with core's load and offload
  devices and core's weight patches (LoRAs) for those names. Loading it moves and patches the view's Parameters only
  (core's stay where core keeps them, unpatched, and core still streams them per op), so the refiner computes on the
  load device with the weights core would use, same patches. Precision: the dtype the tensors are stored in. A
  dynamic load keeps the checkpoint's (`assign=True`) and casts per op to the one core computes in
  (`<name>_comfy_model_dtype`); the refiner computes in the stored one, as SUPIR's parts are built in it before the
  load (converting the view after the load would split them). For the usual fp16 SDXL file that is core's fp16; an
  fp32 file runs fp32 (twice the VRAM of the classic path); an fp16 VAE runs in fp32, as always. Cost: host RAM none
  (views); VRAM one copy of the UNet + VAE for the run, as a classic patcher holds them, but uploaded again on every
  run: the view lives as long as the refiner built over it, so no device copy is kept between runs (nor offloaded
  there into a second host-RAM copy). Core's dynamic MODEL / VAE patchers are not loaded for us (their per-op
  staging would reserve VRAM nothing uses); loading classic views lets ComfyUI free dynamic models' VRAM for them.
  Not `get_non_dynamic_delegate()`: it re-reads the checkpoint (`cached_patcher_init`: a second host-RAM copy of
  the UNet, and the time to read it) and exists for MODEL and CLIP only, not for a VAE.
- Core's MODEL_PATCH (SUPIR through ModelPatchLoader): loaded as it is, dynamic or not. Its control network and
  connectors are comfy.ops layers we only call, never read, so they cast their weights per op, as under core's own
  SUPIRApply; its `denoise_encoder_sd` (tensors outside its patcher) is read by our denoise encoder, which our own
  classic patcher places.
- Core's UPSCALE_MODEL: 0.20.1 passes the bare spandrel descriptor, placed by our classic patcher (above); a build
  passing a patcher gets it loaded as it is (spandrel's layers are plain torch: a dynamic load moves them whole).
- Nothing asks a dynamic patcher for a full load or forced weight patching (`load_models_gpu`'s force_full_load
  never reaches a dynamic patcher's `load`) or for hooks, and nothing calls load_state_dict into a module the host
  built (no `assign=` to honour: our modules take core's tensors by assignment already).

No ComfyUI import: patchers come in as objects; new ones are made by the host (`Host.register`).
"""

from __future__ import annotations

from typing import Any

import torch


def is_dynamic(patcher: Any) -> bool:
    """Whether `patcher` is a dynamic-VRAM patcher (ComfyUI's ModelPatcherDynamic: `is_dynamic()` true); builds
    without dynamic VRAM have no `is_dynamic` and answer False."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def tensor_view(module: torch.nn.Module, prefix: str = "") -> torch.nn.Module:
    """A bare module tree with `module`'s state-dict names (under `prefix`, e.g. "diffusion_model") whose tensors
    are `module`'s own storage, held by new Parameter / buffer objects: moving or patching the view replaces the
    view's tensors only."""
    view = torch.nn.Module()
    for name, tensor in module.state_dict(keep_vars=True).items():
        owner_name, _, leaf = name.rpartition(".")
        target = view
        for part in filter(None, f"{prefix}.{owner_name}".split(".")):
            if part not in target._modules:
                target.add_module(part, torch.nn.Module())
            target = target._modules[part]
        if isinstance(tensor, torch.nn.Parameter):
            target.register_parameter(leaf, torch.nn.Parameter(tensor.detach(), requires_grad=False))
        else:
            target.register_buffer(leaf, tensor.detach())
    return view


class HostView:
    """Our classic patcher over a view of `module`, a part of dynamic `patcher`'s model (see the module docstring).

    `patcher`: core's dynamic patcher (MODEL: its `.model` is the BaseModel, `module` its diffusion_model; VAE:
    `module` is its `.model`). `register`: the host's classic registration, (module, load, offload) -> patcher."""

    def __init__(self, register, patcher: Any, module: torch.nn.Module) -> None:
        root = next((name for name, m in patcher.model.named_modules() if m is module), None)
        if root is None:
            raise ValueError(f"{type(patcher.model).__name__}: its patcher does not hold the module to view")
        self.view = tensor_view(module, root)
        self.root = root
        self.patcher = register(self.view, patcher.load_device, patcher.offload_device)
        names = set(self.view.state_dict())
        own = {key: list(patches) for key, patches in (getattr(patcher, "patches", None) or {}).items()
               if key in names}
        if own:  # core's weight patches (LoRAs), applied to the view's tensors when it loads
            self.patcher.patches.update(own)
        self.patched = sorted(own)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The viewed module's state (its own names) as the view holds it now: on the load device, patched, after
        the view's patcher is loaded."""
        return (self.view.get_submodule(self.root) if self.root else self.view).state_dict()
