"""Core ComfyUI's own SUPIR classes (`comfy.ldm.supir.supir_modules`, ComfyUI >= 0.20) at the size of a given file.

Core's `SUPIR()` hard-codes the full SDXL sizes, so core's ModelPatchLoader cannot load a tiny (or SDXL-shaped)
test file. This builds the same object ModelPatchLoader builds (a module with `control_model`, `project_modules`
and `denoise_encoder_sd`, in a CoreModelPatcher: a MODEL_PATCH) out of core's own GLVControl, ZeroSFT and
ZeroCrossAttn classes, with sizes read from the file's tensors, and loads the file with ModelPatchLoader's prefix
mapping (and its strict load_state_dict). Nothing here computes anything: every forward is core's.

Test-only (the host tests load this pack beside ours; the core-vs-ours comparison script imports it too).
ComfyUI's modules are imported inside the functions, so importing this file needs no ComfyUI.
"""

from __future__ import annotations

import re

import torch
from torch import nn

DENOISE_PREFIX = "first_stage_model.denoise_encoder."
# ModelPatchLoader's SUPIR branch (comfy_extras/nodes_model_patch.py), for the released layout's prefixes
PREFIX_REPLACE = {"model.control_model.": "control_model.",
                  "model.diffusion_model.project_modules.": "project_modules."}


def glv_control_kwargs(control: dict[str, torch.Tensor], num_head_channels: int = 64) -> dict:
    """Core GLVControl's constructor arguments from its tensors (`control_model.` stripped). The head width is not
    in the weights: 64, as in SDXL (and the tiny test models)."""
    model_channels, in_channels = control["input_blocks.0.0.weight"].shape[:2]
    blocks = sorted({int(m[1]) for k in control if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]
    for n in blocks[1:]:
        if f"input_blocks.{n}.0.op.weight" in control:  # a downsampler closes a level
            levels.append([])
        else:
            levels[-1].append(n)

    def depth(prefix: str) -> int:
        return len({m[1] for k in control if (m := re.match(rf"{re.escape(prefix)}transformer_blocks\.(\d+)\.", k))})

    depths = [depth(f"input_blocks.{members[0]}.1.") for members in levels]
    if depths[-1] != depth("middle_block.1."):
        raise ValueError("core's GLVControl gives its middle block the last level's transformer depth; this file's "
                         f"differ ({depths[-1]} and {depth('middle_block.1.')})")
    return dict(
        in_channels=int(in_channels), model_channels=int(model_channels), num_res_blocks=len(levels[0]),
        attention_resolutions=tuple(2**i for i, d in enumerate(depths) if d),
        channel_mult=tuple(int(control[f"input_blocks.{m[0]}.0.out_layers.3.weight"].shape[0]) // int(model_channels)
                           for m in levels),
        num_head_channels=num_head_channels, transformer_depth=tuple(d or 1 for d in depths),
        context_dim=int(control["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]),
        adm_in_channels=int(control["label_emb.0.0.weight"].shape[1]),
    )


class CoreSupirAtFileSize(nn.Module):
    """Core's SUPIR (control_model + project_modules) with the sizes of `state` (ModelPatchLoader's key names).

    Core's SUPIR.__init__ lists its 12 connectors for SDXL; here each connector's class and sizes are read from
    its tensors (ZeroCrossAttn: `attn.to_q`/`to_k`; ZeroSFT: `zero_conv` (skip x control channels) and
    `zero_mul` (skip + decoder channels)); ZeroSFT's hidden width (128) and both norms' 32 groups stay core's."""

    def __init__(self, state: dict[str, torch.Tensor], dtype=None, device=None, operations=None) -> None:
        super().__init__()
        from comfy.ldm.supir import supir_modules as core

        control = {k[len("control_model."):]: v for k, v in state.items() if k.startswith("control_model.")}
        self.control_model = core.GLVControl(**glv_control_kwargs(control), dtype=dtype, device=device,
                                             operations=operations)
        count = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("project_modules."))
        self.project_modules = nn.ModuleList()
        for i in range(count):
            p = f"project_modules.{i}."
            if p + "attn.to_q.weight" in state:
                self.project_modules.append(core.ZeroCrossAttn(
                    int(state[p + "attn.to_k.weight"].shape[1]), int(state[p + "attn.to_q.weight"].shape[1]),
                    dtype=dtype, device=device, operations=operations))
            else:
                norm_nc, label_nc = state[p + "zero_conv.weight"].shape[:2]
                concat = int(state[p + "zero_mul.weight"].shape[0]) - int(norm_nc)
                self.project_modules.append(core.ZeroSFT(int(label_nc), int(norm_nc), concat_channels=concat,
                                                         dtype=dtype, device=device, operations=operations))


def core_supir_patch(path: str):
    """A MODEL_PATCH of core's SUPIR classes over the SUPIR file `path`, built as ModelPatchLoader builds one:
    denoise encoder tensors set aside as `denoise_encoder_sd`, prefixes replaced (other keys dropped), `mask_LQ`
    dropped, the module in a CoreModelPatcher, then a strict load_state_dict."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy.utils

    state = comfy.utils.load_torch_file(path, safe_load=True)
    dtype = comfy.utils.weight_dtype(state)
    denoise = {k[len(DENOISE_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(DENOISE_PREFIX)}
    state = comfy.utils.state_dict_prefix_replace(state, PREFIX_REPLACE, filter_keys=True)
    state.pop("control_model.mask_LQ", None)
    model = CoreSupirAtFileSize(state, dtype=dtype, device=mm.unet_offload_device(), operations=comfy.ops.manual_cast)
    if denoise:
        model.denoise_encoder_sd = denoise
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    model.load_state_dict(state, assign=patcher.is_dynamic())
    return patcher
