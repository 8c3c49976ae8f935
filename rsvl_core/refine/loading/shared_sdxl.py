"""The refiner over an SDXL that somebody else holds (ComfyUI's MODEL and VAE): only SUPIR's own parts are loaded.

A host that already has the SDXL UNet and VAE in memory hands us their state dicts in the single-file (LDM)
layout; the refiner's modules are built on the meta device and take those very tensors by assignment (the key
maps are pure renames and views), so no second SDXL copy exists. What the SUPIR file adds — the control network,
the 12 connectors and the denoise encoder — is loaded once into `SupirParts` and reused on every run (or, where
the host holds SUPIR too, e.g. ComfyUI's core MODEL_PATCH, taken from the host's modules: `supir_parts_over`); the
text encoders come from the host's CLIP (through an object with `SDXLTextEncoder`'s `encode_pair` and
`pooled_dim`) or from an SDXL file read for its text-encoder tensors only (`load_sdxl_text_encoders`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...kit.errors import CheckpointError
from ...weights.checkpoint import read_state_dict, strip_prefix
from ..nets.config import RefinerConfig
from ..nets.control import GLVControl
from ..nets.text import CLIP_G_PREFIX, CLIP_L_PREFIX, SDXLTextEncoder, load_text_encoder_from_single_file
from ..nets.vae import load_refiner_vae
from ..refiner import Refiner
from .loader import (
    CONTROL_PREFIX,
    EXPECTED_SDXL,
    EXPECTED_SUPIR,
    SUPIR_SIGNATURE,
    UNET_PREFIX,
    VAE_PREFIX,
    build_control,
    build_unet,
    infer_refiner_config,
)

CONNECTORS = "project_modules."


@dataclass
class SupirParts:
    """SUPIR's own networks, loaded once from the SUPIR file and kept: control network, connectors, denoise
    encoder. `config` is the refiner architecture read from the host's UNet and the SUPIR file together.

    `host_owned`: the control network and connectors are the host's modules (`supir_parts_over`), placed by the
    host with its own object: `modules()` then lists only the denoise encoder."""

    control: GLVControl | Callable[..., list[torch.Tensor]]
    connectors: nn.ModuleList
    denoise_encoder: nn.Module
    config: RefinerConfig
    path: Path
    host_owned: bool = False
    copied_bytes: int | None = None  # host-owned parts: bytes that had to be converted (not the host's tensors)

    def modules(self) -> dict[str, nn.Module]:
        """The parts to place or offload (all of them ours, the host's SUPIR modules excepted; the SDXL weights
        are the host's)."""
        if self.host_owned:
            return {"denoise_encoder": self.denoise_encoder}
        return {"control": self.control, "connectors": self.connectors, "denoise_encoder": self.denoise_encoder}

    def parameter_bytes(self) -> int:
        """Bytes of the parameters the SUPIR file added (host-owned parts: only what had to be converted)."""
        if self.copied_bytes is not None:
            return self.copied_bytes
        return sum(p.numel() * p.element_size() for m in self.modules().values() for p in m.parameters())


def load_supir_parts(supir_path: str | Path, unet_ldm: dict[str, torch.Tensor], vae_ldm: dict[str, torch.Tensor],
                     dtype: torch.dtype) -> SupirParts:
    """Read the SUPIR file and build its parts for the host's SDXL (whose state dicts give the architecture).

    Args:
        supir_path: SUPIR-v0Q / v0F (`model.control_model.*`, `model.diffusion_model.project_modules.*`,
            `first_stage_model.denoise_encoder.*`).
        unet_ldm: the host's SDXL UNet state, LDM names without `model.diffusion_model.`.
        vae_ldm: the host's VAE state, LDM names without `first_stage_model.`.
        dtype: the control network's and connectors' precision (the host UNet's).
    """
    path = Path(supir_path)
    supir = read_state_dict(path, EXPECTED_SUPIR)
    if SUPIR_SIGNATURE not in supir:
        raise CheckpointError(path, f"has no {SUPIR_SIGNATURE} (no control network)", EXPECTED_SUPIR)
    connectors = {k: v for k, v in strip_prefix(supir, UNET_PREFIX).items() if k.startswith(CONNECTORS)}
    if not connectors:
        raise CheckpointError(path, f"has no {UNET_PREFIX}{CONNECTORS}* (ZeroSFT connectors)", EXPECTED_SUPIR)
    config = infer_refiner_config({**unet_ldm, **connectors})
    control = build_control(config, strip_prefix(supir, CONTROL_PREFIX), path, dtype)
    # the connectors, built inside a UNet over the host's weights and taken out of it
    unet = build_unet(config, {**unet_ldm, **connectors}, path, dtype, path)
    denoise = {k: v for k, v in supir.items() if k.startswith(VAE_PREFIX + "denoise_encoder.")}
    first_stage = {VAE_PREFIX + k: v for k, v in vae_ldm.items()}
    vae = load_refiner_vae({**first_stage, **denoise}, path, dtype=_dtype_of(vae_ldm))
    return SupirParts(control, unet.project_modules, vae.denoise_encoder, config, path)


def supir_parts_over(control: Callable[..., list[torch.Tensor]], connectors: nn.ModuleList,
                     denoise_state: dict[str, torch.Tensor], unet_ldm: dict[str, torch.Tensor],
                     vae_ldm: dict[str, torch.Tensor], source: str | Path) -> SupirParts:
    """SUPIR's parts from modules the host already holds (nothing of SUPIR is read again).

    Args:
        control: called as GLVControl is: (hint, sample, timestep, encoder_hidden_states, y) -> the feature list.
        connectors: the 12 ZeroSFT / ZeroCrossAttn modules in checkpoint order (`project_modules.<i>` names and
            shapes), called as ours are: ZeroSFT (control, skip, decoder=None, control_scale), ZeroCrossAttn
            (control, h, control_scale).
        denoise_state: the denoise encoder's tensors, LDM names without `first_stage_model.denoise_encoder.`;
            our encoder module takes them by assignment (converted only where the VAE's precision differs:
            the refiner's VAE never runs in fp16).
        unet_ldm / vae_ldm: the host's SDXL UNet and VAE states (LDM names, no prefixes): the architecture.
        source: what to name in messages (the host's model, not a file).
    """
    path = Path(str(source))
    connector_state = {CONNECTORS + k: v for k, v in connectors.state_dict().items()}
    if not connector_state:
        raise CheckpointError(path, "has no connectors (project_modules)", EXPECTED_SUPIR)
    config = infer_refiner_config({**unet_ldm, **connector_state})
    denoise = {VAE_PREFIX + "denoise_encoder." + k: v for k, v in denoise_state.items()}
    if not denoise:
        raise CheckpointError(path, "has no denoise encoder (first_stage_model.denoise_encoder.*)", EXPECTED_SUPIR)
    first_stage = {VAE_PREFIX + k: v for k, v in vae_ldm.items()}
    encoder = load_refiner_vae({**first_stage, **denoise}, path, dtype=_dtype_of(vae_ldm)).denoise_encoder
    given = {t.untyped_storage().data_ptr() for t in denoise_state.values()}
    copied = sum(p.numel() * p.element_size() for p in encoder.parameters()
                 if p.untyped_storage().data_ptr() not in given)
    return SupirParts(control, connectors, encoder, config, path, host_owned=True, copied_bytes=copied)


def refiner_over(parts: SupirParts, unet_ldm: dict[str, torch.Tensor], vae_ldm: dict[str, torch.Tensor],
                 text: Any, sources: dict[str, str]) -> Refiner:
    """A `Refiner` whose UNet and VAE are the host's tensors (assigned, not copied) and whose SUPIR parts and
    text encoder are `parts` and `text`. Cheap: build it again after the host moves or patches its weights."""
    # the connectors' names and shapes only (meta): the UNet's own are replaced by `parts.connectors` below, so no
    # tensor of theirs is converted to the UNet's precision just to be dropped
    connectors = {CONNECTORS + k: v.to("meta") for k, v in parts.connectors.state_dict().items()}
    unet = build_unet(parts.config, {**unet_ldm, **connectors}, parts.path, _dtype_of(unet_ldm), parts.path)
    unet.project_modules = parts.connectors
    first_stage = {VAE_PREFIX + k: v for k, v in vae_ldm.items()}
    vae = load_refiner_vae(first_stage, parts.path, dtype=_dtype_of(vae_ldm), denoise_encoder=parts.denoise_encoder)
    return Refiner(unet, parts.control, vae, text, parts.config, sources)


def load_sdxl_text_encoders(sdxl_path: str | Path, dtype: torch.dtype = torch.float32,
                            device: torch.device | str = "cpu") -> SDXLTextEncoder:
    """Only the text encoders of an SDXL single file (its UNet and VAE are not read)."""
    path = Path(sdxl_path)
    state = read_state_dict(path, EXPECTED_SDXL, prefixes=(CLIP_L_PREFIX, CLIP_G_PREFIX))
    return load_text_encoder_from_single_file(state, path, dtype=dtype, device=device)


def shared_bytes(refiner: Refiner, unet_ldm: dict[str, torch.Tensor], vae_ldm: dict[str, torch.Tensor]) -> int:
    """Bytes of the refiner's UNet and VAE parameters that are the host's own storage (not copies)."""
    host = {t.untyped_storage().data_ptr() for t in (*unet_ldm.values(), *vae_ldm.values())}
    modules = (refiner.unet, refiner.vae.vae)
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()
               if p.untyped_storage().data_ptr() in host)


def _dtype_of(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The precision of a state dict's floating-point tensors (the first one found)."""
    return next(v.dtype for v in state.values() if v.is_floating_point())
