"""Our SUPIR networks against core ComfyUI's (`comfy.ldm.supir`) on the same weights and inputs; prints JSON.

Run by test_model_patch.py with the interpreter of a ComfyUI >= 0.20 host:

    python compare_core_supir.py COMFY_DIR REPO SDXL_FILE SUPIR_FILE

Ours: `load_refiner(SDXL_FILE, SUPIR_FILE)` (our loader, our GLVControl / ZeroSFT / ZeroCrossAttn / denoise encoder).
Core's: the MODEL_PATCH that comfy_probe/core_supir.py builds from SUPIR_FILE out of core's own classes (with
ModelPatchLoader's prefix mapping), and core's VAE Encoder class over its `denoise_encoder_sd`. Same inputs to
both; the largest absolute differences (and the largest values, for scale) are printed as one JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def start_comfy(comfy_dir: str) -> None:
    """Import ComfyUI's model management as `main.py --cpu` would (CPU-only torch: it needs --cpu)."""
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.model_management  # noqa: F401  (parses --cpu)


def load_pack(repo: str):
    """The repository as ComfyUI imports it (by its __init__.py, as a package), for the nodes' adapter."""
    spec = importlib.util.spec_from_file_location("rsvl_pack", Path(repo) / "__init__.py",
                                                  submodule_search_locations=[repo])
    module = importlib.util.module_from_spec(spec)
    sys.modules["rsvl_pack"] = module
    spec.loader.exec_module(module)
    return module


def largest(pairs, **extra) -> dict:
    """{"max_abs_diff": largest |a - b|, "max_abs": largest |a|, **extra} over pairs of tensors of equal shapes."""
    diff = scale = 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            raise SystemExit(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        diff = max(diff, float((a.float() - b.float()).abs().max()))
        scale = max(scale, float(a.float().abs().max()))
    return {"max_abs_diff": diff, "max_abs": scale, **extra}


def recorded_calls(modules, run):
    """Every call of `modules` during `run()`: (index, args, kwargs, output)."""
    calls, hooks = [], []
    for index, module in enumerate(modules):
        def hook(_module, args, kwargs, output, index=index):
            calls.append((index, args, dict(kwargs), output))
        hooks.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        run()
    finally:
        for handle in hooks:
            handle.remove()
    return calls


def main() -> None:
    comfy_dir, repo, sdxl, supir = sys.argv[1:5]
    start_comfy(comfy_dir)
    sys.path[:0] = [str(Path(__file__).parent), repo]
    import torch
    from comfy.ldm.modules.diffusionmodules.model import Encoder
    from comfy_probe.core_supir import core_supir_patch

    from rsvl_core.refine.refiner import load_refiner

    torch.manual_seed(0)
    ours = load_refiner(sdxl, supir)
    patch = core_supir_patch(supir)
    core = patch.model
    config = ours.config
    results: dict[str, dict] = {}

    # the same inputs: a CFG-like batch of 2 on a 16x16 latent (3 levels: 16, 8, 4), discrete timesteps
    g = torch.Generator().manual_seed(1)
    hint, x = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    timesteps = torch.tensor([999, 321])
    context = torch.randn(2, 7, config.context_dim, generator=g)
    y = torch.randn(2, config.adm_in_channels, generator=g)

    with torch.inference_mode():
        # 1. control features: ours (hint, sample, t, context, y), core's (hint, t, xt, context, y)
        features = ours.control(hint, x, timesteps, context, y)
        core_features = core.control_model(hint, timesteps, x, context, y)
        results["features"] = largest(zip(features, core_features, strict=True), count=len(features))

        # 2. every connector call of our decoder, replayed on core's module of the same index (same arguments)
        for scale in (1.0, 0.5, 0.0):
            calls = recorded_calls(ours.unet.project_modules,
                                   lambda scale=scale: ours.unet(x, timesteps, context, y, features, scale))
            replayed = [(out, core.project_modules[i](*args, **kwargs)) for i, args, kwargs, out in calls]
            results[f"connectors_cs{scale}"] = largest(replayed, calls=sorted({i for i, *_ in calls}))

        # 3. the whole UNet step (epsilon): ours, and ours with core's control + connectors through the nodes'
        #    adapter (the model_patch input of ControlNetRefine)
        pack = load_pack(repo)
        adapter = __import__(f"{pack.__name__}.rsvl_core.hosted.model_patch", fromlist=["CoreControl"])
        control = adapter.CoreControl(core.control_model, torch.float32)
        for scale in (1.0, 0.5):
            eps = ours.unet(x, timesteps, context, y, features, scale)
            own = ours.unet.project_modules
            try:
                ours.unet.project_modules = core.project_modules
                core_eps = ours.unet(x, timesteps, context, y, control(hint, x, timesteps, context, y), scale)
            finally:
                ours.unet.project_modules = own
            results[f"eps_cs{scale}"] = largest([(eps, core_eps)])

        # 4. the denoise encoder: ours against core's VAE Encoder class over the patch's denoise_encoder_sd
        #    (core's SUPIRApply patches these tensors into its VAE's encoder)
        denoise = core.denoise_encoder_sd
        widths = [denoise[f"down.{i}.block.0.conv1.weight"].shape[0]
                  for i in range(1 + max(int(k.split(".")[1]) for k in denoise if k.startswith("down.")))]
        layers = 1 + max(int(k.split(".")[3]) for k in denoise if k.startswith("down.0.block."))
        encoder = Encoder(ch=widths[0], out_ch=3, ch_mult=[w // widths[0] for w in widths], num_res_blocks=layers,
                          attn_resolutions=[], in_channels=3, resolution=256,
                          z_channels=denoise["conv_out.weight"].shape[0] // 2, double_z=True)
        encoder.load_state_dict(denoise, strict=True)
        image = torch.rand(1, 3, 64, 48, generator=g) * 2 - 1
        results["denoise_encoder"] = largest([(ours.vae.denoise_encoder(image), encoder(image))])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
