"""ControlNetRefine's use of core's MODEL / VAE / MODEL_PATCH with ComfyUI's dynamic-VRAM patcher forced on the CPU;
prints JSON.

Run by test_dynamic_vram.py with the interpreter of a ComfyUI >= 0.20 host (one with `ModelPatcherDynamic`):

    python dynamic_vram_probe.py COMFY_DIR REPO SDXL_FILE SUPIR_FILE

ComfyUI's main.py switches `comfy.model_patcher.CoreModelPatcher` to `ModelPatcherDynamic` where comfy-aimdo works
(NVIDIA); its `__new__` gives a classic ModelPatcher for a CPU load device. Here `ForcedDynamic` is core's class
with only that reroute removed (on a CPU load device core's own code then runs without a VBAR: no aimdo), and it is
made CoreModelPatcher as main.py does. Core's MODEL and VAE are stand-ins (the SDXL file's tensors in modules of
core's names, in CoreModelPatcher, a LoRA-like weight patch on the MODEL); the MODEL_PATCH is core's SUPIR classes
(comfy_probe/core_supir.py, built with CoreModelPatcher and `assign=is_dynamic()` as ModelPatchLoader does).
The same refinement runs with CoreModelPatcher classic and forced dynamic; the script reports what our code asked
of the host in each (patcher classes, load_models_gpu calls, dynamic loads' arguments, hooks), where the refiner's
tensors came from, and the largest difference between the two images.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
import weakref
from pathlib import Path
from types import SimpleNamespace

from compare_core_supir import load_pack, start_comfy

LORA_KEY = "diffusion_model.input_blocks.0.0.weight"  # core's name of the UNet's first conv (ours: conv_in)
WIDGETS = dict(positive_prompt="sharp", negative_prompt="blurry", steps=2, cfg_scale=4.0, cfg_scale_start=4.0,
               control_scale=1.0, color_fix="wavelet", seed=1, latent_tile_size=0, min_size=64)


def module_of(state):
    """A bare module tree holding `state`'s tensors as parameters under their names (core's layout stand-in)."""
    import torch

    root = torch.nn.Module()
    for name, tensor in state.items():
        *path, leaf = name.split(".")
        owner = root
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, torch.nn.Module())
            owner = owner._modules[part]
        owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))
    return root


def main() -> None:
    comfy_dir, repo, sdxl, supir = sys.argv[1:5]
    start_comfy(comfy_dir)
    sys.path[:0] = [str(Path(__file__).parent)]
    import comfy.model_management as mm
    import comfy.model_patcher as mp
    import comfy.utils
    import torch
    from comfy_probe.core_supir import core_supir_patch

    pack = load_pack(repo)
    nodes = importlib.import_module(f"{pack.__name__}.nodes.host")
    hosted = f"{pack.__name__}.rsvl_core.hosted"
    logic = types.SimpleNamespace(**{name: getattr(importlib.import_module(f"{hosted}.{m}"), name)
                                     for m, names in (("settings", ["refine_options"]), ("handles", ["ModelHandle"]),
                                                      ("sdxl", ["refiner_over_host_sdxl"])) for name in names})
    dynamic_vram = importlib.import_module(f"{pack.__name__}.rsvl_core.hosted.dynamic_vram")
    components = importlib.import_module(f"{pack.__name__}.rsvl_core.pipeline.components")
    host = nodes.HOST
    classic = mp.ModelPatcher

    class ForcedDynamic(mp.ModelPatcherDynamic):
        """Core's ModelPatcherDynamic, kept dynamic on a CPU load device (core reroutes that to ModelPatcher)."""

        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

    # what our code asks of the host: every load_models_gpu call, every dynamic patcher's load() arguments
    calls, dynamic_loads = [], []
    real_load_models_gpu, real_dynamic_load = mm.load_models_gpu, mp.ModelPatcherDynamic.load

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        calls.append({"patchers": list(models), "force_full_load": force_full_load,
                      "force_patch_weights": force_patch_weights})
        return real_load_models_gpu(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                                    minimum_memory_required=minimum_memory_required, force_full_load=force_full_load)

    def dynamic_load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False,
                     dirty=False):
        dynamic_loads.append({"full_load": full_load, "force_patch_weights": force_patch_weights,
                              "device_to": str(device_to)})
        return real_dynamic_load(self, device_to, lowvram_model_memory, force_patch_weights, full_load, dirty)

    mm.load_models_gpu, mp.ModelPatcherDynamic.load = load_models_gpu, dynamic_load

    state = comfy.utils.load_torch_file(sdxl, safe_load=True)
    unet = {k[len("model.diffusion_model."):]: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    vae = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    lora = 0.01 * torch.randn(unet["input_blocks.0.0.weight"].shape, generator=torch.Generator().manual_seed(3))
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    options = logic.refine_options(**WIDGETS)

    def run(core_class, with_patch: bool) -> tuple[torch.Tensor, dict]:
        """One refinement over core objects built with CoreModelPatcher = core_class (fresh tensors each run)."""
        mp.CoreModelPatcher = core_class  # what main.py does when dynamic VRAM is on
        base = torch.nn.Module()
        base.diffusion_model = module_of({k: v.clone() for k, v in unet.items()})
        model = mp.CoreModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        model.add_patches({LORA_KEY: (lora,)}, 1.0)
        vae_module = module_of({k: v.clone() for k, v in vae.items()})
        vae_out = SimpleNamespace(first_stage_model=vae_module, patcher=mp.CoreModelPatcher(
            vae_module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()))
        model_patch = core_supir_patch(supir) if with_patch else None
        core_conv_before = base.diffusion_model.input_blocks._modules["0"]._modules["0"].weight.detach().clone()
        handle = logic.ModelHandle("refiner", {"sdxl": sdxl, "supir": supir})
        calls.clear()
        dynamic_loads.clear()
        refiner, line = logic.refiner_over_host_sdxl(host, handle, model, vae_out, None, prompts=[],
                                                     model_patch=model_patch)
        with torch.inference_mode():
            result, _ = components.refine_image(refiner, image, "fields", options, seed=1)
        loaded = [p for call in calls for p in call["patchers"]]
        core_patchers = [model, vae_out.patcher] + ([model_patch] if model_patch is not None else [])
        conv = refiner.unet.conv_in.weight
        core_conv_now = base.diffusion_model.input_blocks._modules["0"]._modules["0"].weight
        core_storage = {t.untyped_storage().data_ptr() for t in base.diffusion_model.state_dict().values()}
        facts = {
            "core_dynamic": [bool(p.is_dynamic()) for p in core_patchers],
            "calls": [{"classes": [type(p).__name__ for p in call["patchers"]],
                       "force_full_load": call["force_full_load"],
                       "force_patch_weights": call["force_patch_weights"]} for call in calls],
            "core_model_vae_loaded": [any(p is q for q in loaded) for p in (model, vae_out.patcher)],
            "model_patch_loaded": model_patch is not None and any(p is model_patch for p in loaded),
            "dynamic_loads": list(dynamic_loads),
            "our_patcher_classes": sorted({type(p).__name__ for p in handle.placement.patchers.values() if p}),
            "hooks": [bool(p.hook_patches) or p.current_hooks is not None or p.forced_hooks is not None
                      for p in (*loaded, *core_patchers)],
            # the refiner's first conv: core's weight with the LoRA patch applied, and core's own left untouched
            "conv_patched": float((conv.float() - (core_conv_before + lora)).abs().max()),
            "core_conv_untouched": bool(torch.equal(core_conv_now, core_conv_before)),
            # the refiner's UNet parameters that are not core's current tensors (the connectors are SUPIR's)
            "unet_not_core_storage": sorted(n for n, t in refiner.unet.named_parameters()
                                            if not n.startswith("project_modules.")
                                            and t.untyped_storage().data_ptr() not in core_storage),
            "refiner_device": str(refiner.device),
            "line": line,
        }
        # the views (our classic patchers over core's tensors) last as long as the refiner: gone after it
        views = [weakref.ref(p) for p in loaded if type(p) is classic and not any(p is q for q in core_patchers)
                 and p not in handle.placement.patchers.values()]
        facts["views"] = len(views)
        facts["views_alive_during_run"] = sum(v() is not None for v in views)
        del refiner, loaded, calls[:]  # by reference counting alone, as when the node returns (no gc.collect)
        mm.cleanup_models()
        facts["views_alive_after_run"] = sum(v() is not None for v in views)
        facts["views_still_registered"] = sum(any(m.model is v() for m in mm.current_loaded_models)
                                              for v in views if v() is not None)
        return result, facts

    out: dict = {}
    for with_patch in (False, True):
        key = "model_patch" if with_patch else "supir_file"
        classic_image, out[f"classic_{key}"] = run(classic, with_patch)
        dynamic_image, out[f"dynamic_{key}"] = run(ForcedDynamic, with_patch)
        out[f"image_diff_{key}"] = float((classic_image - dynamic_image).abs().max())

    # our registration and a view alone, CoreModelPatcher still forced dynamic: our own patcher is classic; moving
    # the view to another device (meta: nothing to allocate) moves and patches none of core's tensors
    mp.CoreModelPatcher = ForcedDynamic
    out["register_class"] = type(host.register(torch.nn.Linear(2, 2), torch.device("cpu"),
                                               torch.device("cpu"))).__name__
    base = torch.nn.Module()
    base.diffusion_model = module_of({"a.weight": torch.randn(4, 4), "b.weight": torch.randn(4, 4)})
    before = {k: v.clone() for k, v in base.diffusion_model.state_dict().items()}
    core = mp.CoreModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    core.add_patches({"diffusion_model.a.weight": (torch.ones(4, 4),)}, 1.0)
    view = dynamic_vram.HostView(host.register, core, base.diffusion_model)
    view.patcher.load(torch.device("meta"), full_load=True)
    moved = view.state_dict()
    out["view_move"] = {
        "view_class": type(view.patcher).__name__, "patched": view.patched,
        "view": {k: [str(v.device), str(v.dtype)] for k, v in moved.items()},
        "core": {k: [str(v.device), str(v.dtype)] for k, v in base.diffusion_model.state_dict().items()},
        "core_unchanged": all(torch.equal(v, before[k]) for k, v in base.diffusion_model.state_dict().items()),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
