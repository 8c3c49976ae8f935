"""Loading the refiner from the files users own: an SDXL single file plus a SUPIR checkpoint.

The seed loads the SDXL file and then the SUPIR file over it (`strict=False`); we do the same
merge (SUPIR wins), then check every part strictly: any missing or unexpected key is an error
naming the file. Architecture comes from tensor shapes, so tiny test models and SDXL load alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ...kit.errors import CheckpointError
from ...weights.checkpoint import check_state, read_state_dict, strip_prefix
from ...weights.families import FAMILY
from ..nets.config import RefinerConfig
from ..nets.control import GLVControl
from ..nets.unet import RefinerUNet
from .ldm_keys import ldm_to_ours, ours_to_ldm

# The single-file layout's parts and the keys that identify each file: from the one table of model families.
UNET_PREFIX = FAMILY["ldm-unet"].prefix
CONTROL_PREFIX = FAMILY["supir-control"].prefix
VAE_PREFIX = FAMILY["ldm-vae"].prefix
TEXT_PREFIX = FAMILY["sdxl-text"].prefix

SDXL_SIGNATURE = FAMILY["ldm-unet"].signature
SUPIR_SIGNATURE = FAMILY["supir-control"].signature
EXPECTED_SDXL = "an SDXL single-file checkpoint (model.diffusion_model.*, first_stage_model.*, conditioner.*)"
EXPECTED_SUPIR = "a SUPIR checkpoint (SUPIR-v0Q/v0F: model.control_model.*, project_modules, denoise_encoder)"


def infer_refiner_config(unet_state: dict[str, torch.Tensor], num_head_channels: int = 64) -> RefinerConfig:
    """Architecture from the shapes of an SGM-layout UNet state (prefix stripped).

    The head width cannot be read from weights; SDXL uses 64 everywhere.
    """
    model_channels, in_channels = unet_state["input_blocks.0.0.weight"].shape[:2]
    blocks = sorted({int(m.group(1)) for k in unet_state if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    widths: list[int] = []
    level_blocks: list[list[int]] = [[]]
    for n in blocks[1:]:
        if f"input_blocks.{n}.0.op.weight" in unet_state:
            level_blocks.append([])
            continue
        level_blocks[-1].append(n)
    depth: list[int] = []
    attention: list[int] = []
    for level, members in enumerate(level_blocks):
        widths.append(unet_state[f"input_blocks.{members[0]}.0.out_layers.3.weight"].shape[0])
        layers = {int(m.group(1)) for k in unet_state
                  if (m := re.match(rf"input_blocks\.{members[0]}\.1\.transformer_blocks\.(\d+)\.", k))}
        depth.append(len(layers) or 1)
        if layers:
            attention.append(2**level)
    context_key = next(k for k in unet_state if k.endswith("attn2.to_k.weight"))
    out_channels = unet_state["out.2.weight"].shape[0] if "out.2.weight" in unet_state else in_channels
    hidden_key = "project_modules.0.mlp_shared.0.weight"
    return RefinerConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(w // model_channels for w in widths),
        num_res_blocks=len(level_blocks[0]),
        attention_resolutions=tuple(attention),
        transformer_depth=tuple(depth),
        num_head_channels=num_head_channels,
        context_dim=unet_state[context_key].shape[1],
        adm_in_channels=unet_state["label_emb.0.0.weight"].shape[1],
        zero_sft_hidden=unet_state[hidden_key].shape[0] if hidden_key in unet_state else 128,
    )


def _blame(key: str, path: Path, supir_path: Path | None) -> tuple[Path, str]:
    """SUPIR's own parts come from the SUPIR file; everything else of the UNet from the SDXL file."""
    if supir_path is not None and key.startswith("project_modules."):
        return supir_path, EXPECTED_SUPIR
    return path, EXPECTED_SDXL


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], unknown: list[str], path: Path,
                 what: str, expected: str, dtype: torch.dtype, supir_path: Path | None = None) -> None:
    blame = (lambda key: _blame(key, path, supir_path)) if supir_path is not None else (path, expected)
    check_state(module.state_dict(), state, blame, what, extra_unexpected=unknown)
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)


def build_unet(config: RefinerConfig, ldm_state: dict[str, torch.Tensor], path: Path,
               dtype: torch.dtype = torch.float32, supir_path: Path | None = None) -> RefinerUNet:
    """RefinerUNet from an SGM-layout state (prefix stripped), built on meta then filled (no double allocation).

    `path` is blamed for SDXL UNet keys, `supir_path` (default: path) for the connectors.
    """
    with torch.device("meta"):
        unet = RefinerUNet(config)
    state, unknown = ldm_to_ours(ldm_state, config)
    _load_strict(unet, state, unknown, path, "SDXL UNet + SUPIR connectors", EXPECTED_SDXL, dtype,
                 supir_path or path)
    return unet.eval().requires_grad_(False)


def build_control(config: RefinerConfig, ldm_state: dict[str, torch.Tensor], path: Path,
                  dtype: torch.dtype = torch.float32) -> GLVControl:
    """GLVControl from an SGM-layout state (prefix `model.control_model.` stripped)."""
    with torch.device("meta"):
        control = GLVControl(config)
    state, unknown = ldm_to_ours(ldm_state, config, decoder=False, hint=True)
    _load_strict(control, state, unknown, path, "GLVControl", EXPECTED_SUPIR, dtype)
    return control.eval().requires_grad_(False)


def read_refiner_checkpoints(sdxl_path: str | Path, supir_path: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Read both files, check each is what it claims, and merge them (SUPIR over SDXL, as the seed does).

    Returns the merged state and the path to blame for missing parts.
    """
    sdxl_path, supir_path = Path(sdxl_path), Path(supir_path)
    sdxl = read_state_dict(sdxl_path, EXPECTED_SDXL)
    if SDXL_SIGNATURE not in sdxl:
        if SUPIR_SIGNATURE in sdxl:
            raise CheckpointError(sdxl_path, "is a SUPIR checkpoint, given where the SDXL file goes", EXPECTED_SDXL)
        raise CheckpointError(sdxl_path, f"has no {SDXL_SIGNATURE}", EXPECTED_SDXL)
    supir = read_state_dict(supir_path, EXPECTED_SUPIR)
    if SUPIR_SIGNATURE not in supir:
        raise CheckpointError(supir_path, f"has no {SUPIR_SIGNATURE} (no control network)", EXPECTED_SUPIR)
    merged = dict(sdxl)
    merged.update(supir)
    return merged, supir_path


def unet_and_control_to_single_file(unet: RefinerUNet, control: GLVControl) -> tuple[dict, dict]:
    """(SDXL-file part, SUPIR-file part) in the original layout: the plain SDXL UNet, then control + connectors."""
    config = unet.config
    unet_ldm = ours_to_ldm(unet.state_dict(), config)
    sdxl = {UNET_PREFIX + k: v for k, v in unet_ldm.items() if not k.startswith("project_modules.")}
    supir = {UNET_PREFIX + k: v for k, v in unet_ldm.items() if k.startswith("project_modules.")}
    control_ldm = ours_to_ldm(control.state_dict(), config, decoder=False, hint=True)
    supir.update({CONTROL_PREFIX + k: v for k, v in control_ldm.items()})
    return sdxl, supir


@dataclass
class RefinerParts:
    """The UNet and control network of one refiner, with where they came from."""

    unet: RefinerUNet
    control: GLVControl
    config: RefinerConfig


def load_unet_and_control(state: dict[str, torch.Tensor], sdxl_path: Path, supir_path: Path | None = None,
                          dtype: torch.dtype = torch.float32, config: RefinerConfig | None = None) -> RefinerParts:
    """Both networks from a merged SDXL+SUPIR state dict (full prefixes); errors name the file to blame."""
    path = supir_path = Path(supir_path) if supir_path is not None else Path(sdxl_path)
    sdxl_path = Path(sdxl_path)
    unet_state = strip_prefix(state, UNET_PREFIX)
    control_state = strip_prefix(state, CONTROL_PREFIX)
    if not any(k.startswith("project_modules.") for k in unet_state):
        raise CheckpointError(path, "has no model.diffusion_model.project_modules.* (ZeroSFT connectors)",
                              EXPECTED_SUPIR)
    config = config or infer_refiner_config(unet_state)
    unet = build_unet(config, unet_state, sdxl_path, dtype, supir_path)
    control = build_control(config, control_state, supir_path, dtype)
    return RefinerParts(unet, control, config)
