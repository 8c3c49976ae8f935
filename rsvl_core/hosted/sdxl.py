"""Our refiner over the SDXL a host holds (core's MODEL / VAE, and its CLIP): the host places and patches its own
weights, our modules take those tensors (no second copy); only SUPIR's parts, or the host's SUPIR MODEL_PATCH, and
without a CLIP the text encoders are added."""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..kit.devices import release_freed_host_memory
from ..pipeline.components import TextEmbedding, load_sdxl_text_encoders, load_supir_parts, refiner_over, shared_bytes
from .dynamic_vram import HostView, is_dynamic
from .handles import HandleSource, Host, HostPlacement, ModelHandle, NodeError
from .model_patch import supir_parts_from_patch

log = logging.getLogger("rsvl")
MIB = 1024 ** 2


class HostClipText:
    """The refiner's text encoder interface (`encode_pair`, `pooled_dim`) over the CLIP of core's Load Checkpoint.

    Each prompt ("<caption> <positive prompt>", and the negative prompt) is encoded as core's CLIP Text Encode
    does (`clip.tokenize` + `clip.encode_from_tokens`, pooled output too); positive and negative contexts of
    different lengths are repeated to a common length, as ComfyUI's sampler does for CFG."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip
        self._pooled_dim: int | None = None
        self._encoded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, texts: list[str]) -> None:
        """Encode `texts` now (kept on the intermediate device): the CLIP then runs before the UNet is placed, so
        ComfyUI never swaps the UNet out for it in the middle of a refinement."""
        for text in texts:
            self._encode(text)

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._encoded:
            context, pooled = self.clip.encode_from_tokens(self.clip.tokenize(text), return_pooled=True)
            if pooled is None:
                raise NodeError("clip: this CLIP gives no pooled output; connect the CLIP of an SDXL checkpoint")
            self._encoded[text] = (context.float().cpu(), pooled.float().reshape(1, -1).cpu())
        return self._encoded[text]

    @property
    def pooled_dim(self) -> int:
        if self._pooled_dim is None:
            self._pooled_dim = self._encode("")[1].shape[-1]
        return self._pooled_dim

    def encode_pair(self, positive: list[str], negative: list[str]) -> tuple[TextEmbedding, TextEmbedding]:
        pos = [self._encode(t) for t in positive]
        neg = [self._encode(t) for t in negative]
        length = math.lcm(*(c.shape[1] for c, _ in pos + neg))

        def batch(items):
            context = torch.cat([c.repeat(1, length // c.shape[1], 1) for c, _ in items])
            return TextEmbedding(context, torch.cat([p for _, p in items]))

        return batch(pos), batch(neg)


class _Stage:
    """One module under a name, as HostPlacement takes a stage (`modules()` -> {name: module})."""

    def __init__(self, **modules: torch.nn.Module) -> None:
        self._modules = modules

    def modules(self) -> dict[str, torch.nn.Module]:
        return self._modules


def refiner_over_host_sdxl(host: Host, handle: ModelHandle, model: Any, vae: Any, clip: Any = None,
                           memory_required: int = 0, prompts: Sequence[str] = (), model_patch: Any = None):
    """The refiner over core's MODEL / VAE (and CLIP): ComfyUI places and patches its own SDXL weights, our
    modules take those tensors (no second copy), and only SUPIR's parts (once) and, without a CLIP, the text
    encoders of the SDXL file chosen in LoadRSVLModels (only those tensors) are loaded and registered.
    `model_patch`: core's SUPIR MODEL_PATCH (ModelPatchLoader): SUPIR's parts are then its modules, loaded by
    ComfyUI with the MODEL, and LoadRSVLModels' SUPIR file is not read (rsvl_core/hosted/model_patch.py).
    `prompts`: the texts the run will encode; with a CLIP they are encoded first (see HostClipText.prepare).
    A MODEL / VAE under ComfyUI's dynamic VRAM keeps its tensors on the offload device: the refiner then takes them
    through views placed by a classic patcher of ours for this run (rsvl_core/hosted/dynamic_vram.py).
    Returns the refiner and the report line saying what is shared and what was loaded."""
    if model_patch is None and "supir" not in handle.sources:
        raise NodeError("no SUPIR model chosen: pick supir_model in LoadRSVLModels, or connect model_patch (core's "
                        "ModelPatchLoader with a SUPIR file)")
    if vae is None:
        raise NodeError("model is connected but vae is not: connect the VAE of the same Load Checkpoint")
    if clip is None and not handle.sources.get("sdxl"):
        raise NodeError("no text encoder: connect the CLIP of your Load Checkpoint, or choose an "
                        "sdxl_checkpoint in LoadRSVLModels (only its text encoders are then loaded)")
    try:
        unet_module, vae_module = model.model.diffusion_model, vae.first_stage_model
    except AttributeError:
        raise NodeError("model / vae: expected the MODEL and VAE of core's Load Checkpoint (an SDXL)") from None
    if handle.placement is None:
        handle.placement = HostPlacement(host, handle.device)
    if clip is not None:
        text = HostClipText(clip)
        text.prepare(list(prompts))
    parts, stage = supir_parts(handle, unet_module, vae_module, model_patch)
    handle.placement.acquire(stage, parts, memory_required)
    stages = [stage]  # our registered stages this run uses
    if clip is None:
        text = text_encoders(handle)
        stages.append("text")
    # ComfyUI's weights and ours, loaded in one call (none evicts another), placed and patched by ComfyUI; the
    # refiner is built over the tensors as they are now, on every run: nothing stale is kept between runs. A
    # dynamic-VRAM MODEL / VAE leaves its tensors on the offload device: the refiner then takes them through a
    # view loaded by a classic patcher of ours, for this run (rsvl_core/hosted/dynamic_vram.py)
    ours = [handle.placement.patchers[s] for s in stages if handle.placement.patchers.get(s) is not None]
    held = {"unet": (model, unet_module), "vae": (vae.patcher, vae_module)}
    views = {name: HostView(host.register, patcher, module) for name, (patcher, module) in held.items()
             if is_dynamic(patcher)}
    core = [views[name].patcher if name in views else patcher for name, (patcher, _) in held.items()]
    host.load([*core, *([model_patch] if model_patch is not None else []), *ours], memory_required)
    unet_ldm, vae_ldm = (views[name].state_dict() if name in views else module.state_dict()
                         for name, (_, module) in held.items())
    supir = str(parts.path) if model_patch is not None else str(handle.sources["supir"])
    sources = {"sdxl": "MODEL/VAE of the connected checkpoint", "supir": supir}
    refiner = refiner_over(parts, unet_ldm, vae_ldm, text, sources)
    if views:  # the views (and their device copies) live as long as the refiner built over them: this run
        weakref.finalize(refiner, views.clear)
    line = weights_line(handle, refiner, parts, text, unet_ldm, vae_ldm, clip is not None, model_patch is not None)
    if views:
        patched = sum(len(v.patched) for v in views.values())
        names = " and ".join({"unet": "UNet", "vae": "VAE"}[n] for n in views)
        line += (f"; dynamic VRAM: the {names} tensors placed on the device for this run by the pack's own patcher "
                 "over a view of them (no host-RAM copy"
                 + (f"; {patched} weight patch{'es' if patched != 1 else ''} (LoRA) applied)" if patched else ")"))
    return refiner, line



def supir_parts(handle: ModelHandle, unet_module: Any, vae_module: Any, model_patch: Any = None) -> tuple[Any, str]:
    """SUPIR's parts for the host's UNet and VAE, and the stage they are registered as: the MODEL_PATCH's modules
    (built once per patch), else loaded once from the handle's SUPIR file."""
    if model_patch is not None:
        parts = supir_parts_from_patch(model_patch, unet_module.state_dict(), vae_module.state_dict())
        if handle.shared.get("model_patch") is not parts:  # another patch: its own denoise encoder to register
            handle.shared["model_patch"] = parts
            handle.placement.patchers.pop("model_patch", None)
        return parts, "model_patch"
    if "supir" not in handle.shared:  # SUPIR's parts are built for the host's UNet and VAE (their shapes)
        unet_ldm, vae_ldm = unet_module.state_dict(), vae_module.state_dict()
        dtype = next(v.dtype for v in unet_ldm.values() if v.is_floating_point())
        log.info("rsvl: loading the SUPIR parts of %s over the connected MODEL/VAE", handle.describe())
        handle.shared["supir"] = load_supir_parts(handle.sources["supir"], unet_ldm, vae_ldm, dtype)
        handle.load_count += 1
        del unet_ldm, vae_ldm
        release_freed_host_memory()
    return handle.shared["supir"], "supir"


def text_encoders(handle: ModelHandle) -> Any:
    """Only the text encoders of the handle's SDXL file (no CLIP connected): loaded once, placed by the host."""
    if "text" not in handle.shared:
        log.info("rsvl: loading only the text encoders of %s (no CLIP connected)", handle.sources["sdxl"])
        handle.shared["text"] = _Stage(text=load_sdxl_text_encoders(handle.sources["sdxl"]))
        release_freed_host_memory()
    handle.placement.acquire("text", handle.shared["text"])
    return handle.shared["text"].modules()["text"]


def weights_line(handle: ModelHandle, refiner: Any, parts: Any, text: Any, unet_ldm: dict, vae_ldm: dict,
                 with_clip: bool, with_patch: bool) -> str:
    """The report line: what the refiner shares with the host's MODEL/VAE, and what the pack loaded."""
    loaded = parts.parameter_bytes() if not with_patch else 0
    if not with_clip:
        loaded += sum(p.numel() * p.element_size() for p in text.parameters())
    if not with_patch:
        what = "SUPIR parts" + (")" if with_clip else " + text encoders)")
    else:
        what = ("text encoders)" if not with_clip else "nothing)") + "; SUPIR: the connected model_patch's control " \
            "network, connectors and denoise encoder (not loaded again" + (
                f"; its denoise encoder converted to the VAE's precision, {parts.copied_bytes / MIB:.0f} MiB)"
                if parts.copied_bytes else ")")
    return (f"weights: SDXL UNet + VAE {shared_bytes(refiner, unet_ldm, vae_ldm) / MIB:.0f} MiB shared with the "
            f"connected MODEL/VAE (not copied); loaded by the pack: {loaded / MIB:.0f} MiB ({what}; caption encoded "
            "by " + ("the connected CLIP" if with_clip else f"the text encoders of "
                     f"{os.path.basename(handle.sources['sdxl'])}"))


def host_sdxl_source(host: Host, handle: ModelHandle, model: Any, vae: Any, clip: Any = None,
                     prompts: Sequence[str] = (), model_patch: Any = None) -> tuple[HandleSource, list[str]]:
    """The refiner over the host's SDXL as a stage run takes it: built when placed (with the run's estimate); the
    list receives the line saying what is shared and what was loaded. Built and loaded once per source: a node's
    later batches reuse it (building it again would load the host's weights and SUPIR's parts once per batch)."""
    lines: list[str] = []
    built: list[Any] = []

    def place(need: Callable[[], int]):
        if not built:
            refiner, line = refiner_over_host_sdxl(host, handle, model, vae, clip, need(), prompts, model_patch)
            built.append(refiner)
            lines.append(line)
        return built[0]

    return HandleSource(lambda: None, place), lines


def refine_source(host: Host, handle: ModelHandle, model: Any = None, clip: Any = None, vae: Any = None,
                  model_patch: Any = None, prompts: Sequence[str] = ()) -> tuple[Any, list[str]]:
    """The refiner a node's inputs ask for, as a stage run takes it: ours over the host's MODEL / VAE (+ CLIP,
    + SUPIR MODEL_PATCH) when a MODEL is connected, else the handle's own SDXL + SUPIR; refused in one line when
    the inputs do not make a refiner. The list receives the weights line of a refiner over the host's SDXL."""
    if model is not None:
        return host_sdxl_source(host, handle, model, vae, clip, prompts, model_patch)
    if model_patch is not None:
        raise NodeError("model_patch is connected but model is not: SUPIR's parts run over an SDXL, connect the "
                        "MODEL and VAE of core's Load Checkpoint")
    if clip is not None or vae is not None:
        raise NodeError("clip / vae are connected but model is not: connect the MODEL of the same Load Checkpoint "
                        "(or none of the three)")
    if not handle.sources.get("sdxl"):
        raise NodeError("the refiner has no SDXL: connect model, clip and vae from core's Load Checkpoint, or "
                        "choose sdxl_checkpoint in LoadRSVLModels")
    return handle.source(host), []
