"""What the ComfyUI nodes do, without ComfyUI: image layout, model handles, options, progress, model folders.

Everything ComfyUI-specific (ModelPatcher, ProgressBar, folder_paths, the intermediate device) reaches this
module as an argument (a `Host`), so the logic is unit-tested without a ComfyUI install.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from ..rsvl_core.checkpoint import first_line
from ..rsvl_core.devices import DTYPE_CHOICES, auto_dtype, release_freed_host_memory, torch_dtype
from ..rsvl_core.errors import RsvlError, WeightsNotFoundError
from ..rsvl_core.pipeline import (
    SETTINGS,
    Acceleration,
    RunConfig,
    StepSettings,
    caption_options_from,
    refine_options_from,
    schedule_from,
    stage1_options_from,
)
from ..rsvl_core.pipeline.acceleration import accelerate_stage
from ..rsvl_core.pipeline.components import (
    SpandrelStage1,
    TextEmbedding,
    load_captioner,
    load_refiner,
    load_sdxl_text_encoders,
    load_stage1,
    load_supir_parts,
    refiner_over,
    shared_bytes,
)
from ..rsvl_core.pipeline.memory_plan import plan_memory
from ..rsvl_core.weights import WEIGHTS
from .dynamic_vram import HostView, is_dynamic
from .model_patch import supir_parts_from_patch

log = logging.getLogger("rsvl")

NONE = "none"
DTYPES = DTYPE_CHOICES
DEVICES = ("auto", "cpu")
BATCH_SEPARATOR = "\n---\n"  # how older versions joined a batch's captions; ControlNetRefine still splits on it
UPSCALE_MODELS = "upscale_models"  # ComfyUI's own folder of single-image SR models (spandrel loads them)

# From the engine's one weights table: our ComfyUI model folders -> (sub-folder of models/rsvl, file extensions;
# None = model folders, not files), and each folder's table entry. SDXL lives in ComfyUI's checkpoints/.
MODEL_FOLDERS: dict[str, tuple[str, set[str] | None]] = {
    entry.comfy_folder: (entry.subdir, None if entry.marker else set(entry.extensions))
    for entry in WEIGHTS.values() if entry.comfy_folder.startswith("rsvl_")
}
FOLDER_ENTRIES = {entry.comfy_folder: entry for entry in WEIGHTS.values() if entry.marker}
FOLDERS = {entry.id: entry.comfy_folder for entry in WEIGHTS.values()}  # e.g. "sdxl" -> "checkpoints"


class NodeError(RsvlError):
    """A user-fixable problem, shown by ComfyUI as one line (no engine traceback chained to it)."""


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI's side, as an interface (the real one lives in comfy_nodes.py; tests pass a fake)


class Host(Protocol):
    def torch_device(self, choice: str) -> torch.device: ...
    def offload_device(self, choice: str) -> torch.device: ...
    def register(self, module: torch.nn.Module, load_device: torch.device, offload_device: torch.device) -> Any: ...
    def load(self, patchers: list, memory_required: int = 0) -> None: ...
    def progress_bar(self, total: int) -> Any: ...
    def check_interrupt(self) -> None: ...
    def intermediate_device(self) -> torch.device: ...
    preview_size: int
    previews: bool  # step previews wanted (ComfyUI's preview method is not "none")


# ---------------------------------------------------------------------------------------------------------------
# image layout: ComfyUI IMAGE is (B, H, W, C) float in [0, 1]; the engine takes (B, 3, H, W)


def to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, 3, H, W) float32 in [0, 1] (alpha dropped, grey repeated)."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise NodeError(f"expected an IMAGE of shape (B, H, W, C), got {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 1:
        image = image.expand(-1, -1, -1, 3)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise NodeError(f"expected 1, 3 or 4 colour channels, got {channels}")
    return image.movedim(-1, 1).float().clamp(0, 1).contiguous()


def to_bhwc(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) -> ComfyUI IMAGE (B, H, W, 3) float32 in [0, 1] on `device`."""
    return image.movedim(1, -1).float().clamp(0, 1).contiguous().to(device)


# ---------------------------------------------------------------------------------------------------------------
# model folders


def register_model_folders(folder_paths) -> None:
    """Add models/rsvl/{sr3,llava,llava_adapter,supir} after any extra_model_paths.yaml entries of the same name."""
    base = os.path.join(folder_paths.models_dir, "rsvl")
    for name, (sub, extensions) in MODEL_FOLDERS.items():
        folder_paths.add_model_folder_path(name, os.path.join(base, sub))
        if extensions:
            paths, known = folder_paths.folder_names_and_paths[name]
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def list_model_folders(folder_paths, name: str) -> list[str]:
    """Sub-folders (of every registered path) that the table entry accepts: the choices of a folder model."""
    entry = FOLDER_ENTRIES[name]
    found: set[str] = set()
    for root in folder_paths.get_folder_paths(name):
        if not os.path.isdir(root):
            continue
        found.update(sub for sub in os.listdir(root) if entry.holds(Path(root, sub)))
    return sorted(found)


def find_model_folder(folder_paths, name: str, choice: str) -> str:
    entry = FOLDER_ENTRIES[name]
    for root in folder_paths.get_folder_paths(name):
        candidate = os.path.join(root, choice)
        if entry.holds(Path(candidate)):
            return candidate
    raise WeightsNotFoundError(
        f"{choice!r} is not a model folder in {', '.join(folder_paths.get_folder_paths(name))} "
        f"(each choice is a sub-folder holding {entry.marker})"
    )


def stage1_choices(folder_paths) -> list[str]:
    """The stage-1 model choices: SR3 files in models/rsvl/sr3, then ComfyUI's upscale models as
    `upscale_models/<file>` (any architecture spandrel recognises)."""
    extra = folder_paths.get_filename_list(UPSCALE_MODELS) if UPSCALE_MODELS in folder_paths.folder_names_and_paths \
        else []
    return [*folder_paths.get_filename_list(FOLDERS["sr3"]), *(f"{UPSCALE_MODELS}/{name}" for name in extra)]


def find_stage1_file(folder_paths, choice: str) -> str:
    """A stage-1 choice (see `stage1_choices`) -> its file path."""
    prefix = UPSCALE_MODELS + "/"
    if choice.startswith(prefix):
        return find_model_file(folder_paths, UPSCALE_MODELS, choice[len(prefix):])
    return find_model_file(folder_paths, FOLDERS["sr3"], choice)


MODEL_PATCHES = "model_patches"  # where core ComfyUI (>= 0.20, SUPIRApply) keeps SUPIR files: offered too
SUPIR_CONTROL_KEY = "model.control_model.input_hint_block.0.weight"  # a SUPIR file's signature tensor


def is_supir_file(path: str) -> bool:
    """Whether a file in models/model_patches is a SUPIR checkpoint: by its safetensors header (no tensor is
    read), else (a pickle) by "supir" in its name. model_patches also holds other patch kinds."""
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as file:
                return SUPIR_CONTROL_KEY in file.keys()
        except Exception:  # unreadable: not offered (a load would say why)
            return False
    return "supir" in os.path.basename(path).lower()


def supir_choices(folder_paths) -> list[str]:
    """SUPIR choices: files in models/rsvl/supir, then SUPIR files of models/model_patches as
    `model_patches/<file>` (where core ComfyUI's own SUPIR nodes look for them)."""
    own = folder_paths.get_filename_list(FOLDERS["supir"])
    if MODEL_PATCHES not in folder_paths.folder_names_and_paths:
        return own
    patches = [name for name in folder_paths.get_filename_list(MODEL_PATCHES)
               if is_supir_file(folder_paths.get_full_path(MODEL_PATCHES, name) or "")]
    return [*own, *(f"{MODEL_PATCHES}/{name}" for name in patches)]


def find_supir_file(folder_paths, choice: str) -> str:
    """A SUPIR choice (see `supir_choices`) -> its file path."""
    prefix = MODEL_PATCHES + "/"
    if choice.startswith(prefix):
        return find_model_file(folder_paths, MODEL_PATCHES, choice[len(prefix):])
    return find_model_file(folder_paths, FOLDERS["supir"], choice)


def host_has_core_supir() -> bool:
    """Whether this ComfyUI has core's SUPIR nodes (SUPIRApply, ComfyUI >= 0.20): its model_patches SUPIR files
    then run in either refiner; README "SUPIR in core ComfyUI" says what ours adds."""
    try:
        from comfy_extras import nodes_model_patch  # core's model-patch nodes (absent outside ComfyUI, or older)
    except ImportError:
        return False
    return hasattr(nodes_model_patch, "SUPIRApply")


def find_model_file(folder_paths, name: str, choice: str) -> str:
    path = folder_paths.get_full_path(name, choice)
    if path is None:
        raise WeightsNotFoundError(f"{choice!r} not found in {', '.join(folder_paths.get_folder_paths(name))}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# model handles: what LoadRSVLModels outputs; each loads its model on first use and registers it with the host


def resolve_dtype(choice: str, device: torch.device) -> str:
    """'auto' -> bf16 on a bf16-capable CUDA device, fp16 on other accelerators, fp32 on the CPU."""
    return auto_dtype(device) if choice == "auto" else choice


class ModuleBundle(torch.nn.Module):
    """One nn.Module over a model's declared parts, so the host's memory manager moves them as one."""

    def __init__(self, **parts: torch.nn.Module) -> None:
        super().__init__()
        for name, part in parts.items():
            self.add_module(name, part)


class HostPlacement:
    """rsvl_core's `Placement`, backed by the host's memory manager (ComfyUI: ModelPatcher + load_models_gpu).

    Each stage's declared modules become one registered patcher the first time the stage is acquired; every
    acquire asks the host to load it (with room for the stage's activations), and the host alone decides when
    to offload. A stage that declares no movable modules (an 8/4-bit captioner) stays where it was loaded."""

    plan = "host memory manager"

    def __init__(self, host: Host, choice: str) -> None:
        self.host = host
        self.device = host.torch_device(choice)
        self.offload_device = host.offload_device(choice)
        self.patchers: dict[str, Any] = {}

    def acquire(self, stage: str, model: Any, memory_required: int = 0) -> None:
        if stage not in self.patchers:
            modules = model.modules()
            self.patchers[stage] = self.host.register(ModuleBundle(**modules), self.device, self.offload_device) \
                if modules else None
        if self.patchers[stage] is not None:
            self.host.load([self.patchers[stage]], memory_required)

    def release(self, stage: str, model: Any) -> None:
        """Nothing: ComfyUI's memory manager offloads when it needs the room."""


@dataclass(eq=False)
class ModelHandle:
    """A model chosen in LoadRSVLModels. `get(host)` loads it once (lazily) and has the host place it."""

    kind: str                           # "stage-1", "captioner", "refiner"
    sources: dict[str, str | None]      # file / folder paths; empty = nothing chosen
    dtype: str = "auto"
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    loader: Callable[[ModelHandle, torch.device, str], Any] | None = None
    model: Any = None
    placement: HostPlacement | None = None
    load_count: int = 0
    shared: dict[str, Any] = field(default_factory=dict)  # over core's SDXL: "supir" parts, "text" encoders

    @property
    def chosen(self) -> bool:
        return bool(self.sources)

    @property
    def patcher(self) -> Any:
        """The host's handle of this model's weights (None before the first use, or when not movable)."""
        return None if self.placement is None else self.placement.patchers.get(self.kind)

    def describe(self) -> str:
        return f"{self.kind}: " + (", ".join(os.path.basename(str(p)) for p in self.sources.values() if p) or NONE)

    def get(self, host: Host, memory_required: int = 0) -> Any:
        """The loaded model, placed by the host (loading it on first use; the host may have offloaded it since)."""
        if not self.chosen:
            raise NodeError(f"no {self.kind} model chosen: pick one in LoadRSVLModels")
        if self.placement is None:
            self.placement = HostPlacement(host, self.device)
        if self.model is None:
            dtype = resolve_dtype(self.dtype, self.placement.device)
            log.info("rsvl: loading %s (%s)", self.describe(), dtype)
            self.model = self.loader(self, self.placement.offload_device, dtype)
            self.load_count += 1
            release_freed_host_memory()  # the load's temporaries, back to the OS
        self.placement.acquire(self.kind, self.model, memory_required)
        return self.model


# Core's UPSCALE_MODEL objects we have placed: one placement (one registered patcher) per loaded model, dropped
# with it when ComfyUI lets the loader's output go.
_UPSCALE_PLACEMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def upscale_model_stage(host: Host, upscale_model: Any, image: torch.Tensor) -> SpandrelStage1:
    """Core's UPSCALE_MODEL ("Load Upscale Model") as our stage 1, placed by the host's memory manager with room
    for upscaling `image` (B, 3, H, W).

    ComfyUI 0.8 passes the spandrel descriptor itself; builds that wrap it in a ModelPatcher pass the patcher
    (its `.model` is the descriptor), which is then loaded as it is. Anything else is refused in one line."""
    import spandrel

    patcher = None
    descriptor = upscale_model
    if not isinstance(descriptor, spandrel.ModelBase) and \
            isinstance(getattr(upscale_model, "model", None), spandrel.ModelBase):
        patcher, descriptor = upscale_model, upscale_model.model
    if not isinstance(descriptor, spandrel.ModelBase):
        raise NodeError(f"upscale_model: expected the UPSCALE_MODEL of core's Load Upscale Model, got "
                        f"{type(upscale_model).__name__}")
    stage = SpandrelStage1.from_descriptor(descriptor, f"UPSCALE_MODEL ({descriptor.architecture.name})")
    memory_required = one_pass_memory(stage, image)
    if patcher is not None:
        host.load([patcher], memory_required)
        return stage
    placement = _UPSCALE_PLACEMENTS.get(descriptor)
    if placement is None:
        placement = _UPSCALE_PLACEMENTS[descriptor] = HostPlacement(host, "auto")
    placement.acquire("stage-1", stage, memory_required)
    return stage


def one_pass_memory(stage: SpandrelStage1, image: torch.Tensor) -> int:
    """Bytes a one-pass model needs beside its weights: core's estimate for a 512-pixel tile, plus the image."""
    element = torch.finfo(stage.model.dtype).bits // 8
    return int(512 * 512 * 3 * element * max(stage.model.native_scale, 1) * 384 + image.numel() * 4)


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
    ComfyUI with the MODEL, and LoadRSVLModels' SUPIR file is not read (nodes/model_patch.py).
    `prompts`: the texts the run will encode; with a CLIP they are encoded first (see HostClipText.prepare).
    A MODEL / VAE under ComfyUI's dynamic VRAM keeps its tensors on the offload device: the refiner then takes them
    through views placed by a classic patcher of ours for this run (nodes/dynamic_vram.py).
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
    stages = []  # our registered stages this run uses
    if model_patch is not None:  # SUPIR's parts are the patch's modules (built once per patch)
        parts = supir_parts_from_patch(model_patch, unet_module.state_dict(), vae_module.state_dict())
        if handle.shared.get("model_patch") is not parts:  # another patch: its own denoise encoder to register
            handle.shared["model_patch"] = parts
            handle.placement.patchers.pop("model_patch", None)
        stages.append("model_patch")
    else:
        if "supir" not in handle.shared:  # SUPIR's parts are built for the host's UNet and VAE (their shapes)
            unet_ldm, vae_ldm = unet_module.state_dict(), vae_module.state_dict()
            dtype = next(v.dtype for v in unet_ldm.values() if v.is_floating_point())
            log.info("rsvl: loading the SUPIR parts of %s over the connected MODEL/VAE", handle.describe())
            handle.shared["supir"] = load_supir_parts(handle.sources["supir"], unet_ldm, vae_ldm, dtype)
            handle.load_count += 1
            del unet_ldm, vae_ldm
            release_freed_host_memory()
        parts = handle.shared["supir"]
        stages.append("supir")
    handle.placement.acquire(stages[0], parts, memory_required)
    if clip is None:
        if "text" not in handle.shared:
            log.info("rsvl: loading only the text encoders of %s (no CLIP connected)", handle.sources["sdxl"])
            handle.shared["text"] = _Stage(text=load_sdxl_text_encoders(handle.sources["sdxl"]))
            release_freed_host_memory()
        handle.placement.acquire("text", handle.shared["text"])
        stages.append("text")
        text = handle.shared["text"].modules()["text"]
    # ComfyUI's weights and ours, loaded in one call (none evicts another), placed and patched by ComfyUI; the
    # refiner is built over the tensors as they are now, on every run: nothing stale is kept between runs. A
    # dynamic-VRAM MODEL / VAE leaves its tensors on the offload device: the refiner then takes them through a
    # view loaded by a classic patcher of ours, for this run (nodes/dynamic_vram.py)
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
    loaded = parts.parameter_bytes() if model_patch is None else 0
    if clip is None:
        loaded += sum(p.numel() * p.element_size() for p in text.parameters())
    if model_patch is None:
        what = "SUPIR parts" + (")" if clip is not None else " + text encoders)")
    else:
        what = ("text encoders)" if clip is None else "nothing)") + "; SUPIR: the connected model_patch's control " \
            "network, connectors and denoise encoder (not loaded again" + (
                f"; its denoise encoder converted to the VAE's precision, {parts.copied_bytes / MIB:.0f} MiB)"
                if parts.copied_bytes else ")")
    line = (f"weights: SDXL UNet + VAE {shared_bytes(refiner, unet_ldm, vae_ldm) / MIB:.0f} MiB shared with the "
            f"connected MODEL/VAE (not copied); loaded by the pack: {loaded / MIB:.0f} MiB ({what}; caption encoded "
            "by " + ("the connected CLIP" if clip is not None else f"the text encoders of "
                     f"{os.path.basename(handle.sources['sdxl'])}"))
    if views:
        patched = sum(len(v.patched) for v in views.values())
        names = " and ".join({"unet": "UNet", "vae": "VAE"}[n] for n in views)
        line += (f"; dynamic VRAM: the {names} tensors placed on the device for this run by the pack's own patcher "
                 "over a view of them (no host-RAM copy"
                 + (f"; {patched} weight patch{'es' if patched != 1 else ''} (LoRA) applied)" if patched else ")"))
    return refiner, line


def load_stage1_model(handle: ModelHandle, device: torch.device, dtype: str):
    """SR3 or any spandrel SR model (told apart by the file's keys)."""
    return load_stage1(handle.sources["stage1"], device=device, dtype=torch_dtype(dtype))


def load_captioner_model(handle: ModelHandle, device: torch.device, dtype: str):
    quantization = handle.options.get("quantization", "none")
    if quantization != "none":  # bitsandbytes weights cannot be moved: load them where they run, unmanaged
        device = handle.options["load_device"]
    return load_captioner(handle.sources["llava"], handle.sources.get("adapter"), device=device, dtype=dtype,
                          quantization=quantization, merge_adapter=handle.options.get("merge_adapter", False),
                          storage=handle.options.get("storage", "none"))


def load_refiner_model(handle: ModelHandle, device: torch.device, dtype: str):
    refiner = load_refiner(handle.sources["sdxl"], handle.sources["supir"], dtype=torch_dtype(dtype), device=device)
    if handle.options.get("fp8"):  # the memory plan's refiner storage
        accelerate_stage("refine", refiner, Acceleration(fp8=True))
    return refiner


def node_memory_plan(max_vram: str, dtype: str) -> dict[str, Any]:
    """LoadRSVLModels' `max_vram`: the plan's weight storage for the handles and its line for the reports.

    In ComfyUI the memory manager places every weight, so only the plan's storage applies (no block swap);
    the plan is made for the paper's input (28 px -> 224 px by SR3, refined at 1024)."""
    if not max_vram:
        return {}
    config = RunConfig.from_values(max_vram=max_vram, dtype="bf16" if dtype == "auto" else dtype)
    plan = plan_memory(config)
    line = f"{plan.describe()} (ComfyUI's memory manager places the weights; the plan sets their storage)"
    log.info("rsvl %s", line)
    return {"storage": plan.caption_storage, "fp8": plan.rung.storage.refine == "fp8", "memory_plan": line}


# ---------------------------------------------------------------------------------------------------------------
# progress, previews and Cancel


def tensor_to_pil(image: torch.Tensor, max_size: int) -> Image.Image:
    """(B, 3, H, W) or (3, H, W) in [0, 1] -> the first image as RGB PIL, shrunk to at most max_size."""
    if image.ndim == 4:
        image = image[0]
    image = image.detach().float().clamp(0, 1)
    height, width = image.shape[-2:]
    factor = max_size / max(height, width) if max_size else 1.0
    if factor < 1:
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        image = torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]
    array = (image.movedim(0, -1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array, "RGB")


class LatentPreview:
    """A cheap latent -> RGB map for step previews: one linear map (4 latent channels + bias -> RGB).

    The map is fitted once per run by least squares from the VAE's own encoding of a small copy of the
    input image, so it matches whatever VAE the refiner uses (no decode per step).
    """

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights  # (C + 1, 3)

    @classmethod
    def fit(cls, latent: torch.Tensor, image: torch.Tensor) -> LatentPreview:
        """latent (1, C, h, w); image (1, 3, H, W) in [0, 1], resized to (h, w)."""
        latent = latent.detach().float().cpu()
        target = torch.nn.functional.interpolate(image.detach().float().cpu(), size=latent.shape[-2:], mode="area")
        x = torch.cat([latent[0].flatten(1), torch.ones(1, latent[0, 0].numel())]).T  # (N, C + 1)
        y = target[0].flatten(1).T                                                     # (N, 3)
        ridge = 1e-3 * torch.eye(x.shape[1])
        weights = torch.linalg.solve(x.T @ x + ridge, x.T @ y)
        return cls(weights)

    @classmethod
    def grey(cls, channels: int = 4) -> LatentPreview:
        weights = torch.zeros(channels + 1, 3)
        weights[0] = 0.2
        weights[-1] = 0.5
        return cls(weights)

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent.detach().float().cpu()[:1]
        channels = latent.shape[1]
        if channels + 1 != self.weights.shape[0]:
            return latent[:, :1].expand(-1, 3, -1, -1).sigmoid()
        flat = torch.cat([latent[0].flatten(1), torch.ones(1, latent[0, 0].numel())]).T @ self.weights
        return flat.T.reshape(1, 3, *latent.shape[-2:]).clamp(0, 1)


class ProgressReporter:
    """The engine's callback(step, total, stage, preview) -> the host's progress bar, previews and Cancel.

    The host bar's update raises when the user presses Cancel (ComfyUI's hook does); `check_interrupt` is
    called as well, so a run stops within one step either way.
    """

    def __init__(self, host: Host, latent_preview: LatentPreview | None = None, previews: bool | None = None,
                 slow_warning: Callable[[float, int, int], None] | None = None) -> None:
        self.host = host
        self.bar = None
        self.latent_preview = latent_preview
        # as core's samplers: step previews only when the user's preview method asks for them (a preview image
        # also makes the frontend grow the node to show it)
        self.previews = host.previews if previews is None else previews
        self.stages: list[str] = []
        self.slow_warning = slow_warning  # called once, after the first step, with (seconds left, step, total)
        self.started = time.monotonic()

    def __call__(self, step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        self.host.check_interrupt()
        if self.slow_warning is not None and step >= 1:
            elapsed = time.monotonic() - self.started
            warn, self.slow_warning = self.slow_warning, None
            warn(elapsed / step * max(total - step, 0), step, total)
        if not self.stages or self.stages[-1] != stage:
            self.stages.append(stage)
        if self.bar is None:
            self.bar = self.host.progress_bar(max(total, 1))
        image = None
        if preview is not None and self.previews:
            if preview.shape[1] != 3:  # a latent (the refiner's denoised estimate)
                preview = (self.latent_preview or LatentPreview.grey(preview.shape[1]))(preview)
            image = ("JPEG", tensor_to_pil(preview, self.host.preview_size), self.host.preview_size)
        self.bar.update_absolute(min(step, total), max(total, 1), image)


def batch_progress(progress: Callable, index: int, batch: int) -> Callable:
    """The callback for image `index` of a batch run one image at a time: its steps continue the batch's one
    bar (and one time estimate) instead of starting it again."""

    def callback(step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        progress(index * total + step, batch * total, stage, preview)

    return callback


# ---------------------------------------------------------------------------------------------------------------
# options from node inputs


# Which engine setting (pipeline SETTINGS) each node input carries: node input name -> setting name. The nodes'
# inputs are generated from these entries, and every setting is reachable from some node (a test checks).
NODE_SETTINGS: dict[str, dict[str, str]] = {
    "LoadRSVLModels": {"dtype": "dtype", "max_vram": "max_vram"},
    "DynamicStepScheduler": {"cache_preset": "cache", "refine_steps": "refine_steps",
                             "cache_threshold": "cache_threshold", "stage1_sampler": "stage1_sampler",
                             "stage1_steps": "stage1_steps", "stage1_cache": "stage1_cache"},
    "Stage1FidelitySR": {"scale": "scale", "sampler": "stage1_sampler", "steps": "stage1_steps", "seed": "seed",
                         "tile_size": "tile_size", "tile_overlap": "tile_overlap", "tile_batch": "tile_batch"},
    "LlavaRSCaption": {"prompt": "caption_prompt", "max_new_tokens": "caption_max_tokens",
                       "temperature": "caption_temperature", "seed": "seed"},
    "ControlNetRefine": {"positive_prompt": "positive_prompt", "negative_prompt": "negative_prompt",
                         "steps": "refine_steps", "cfg_scale": "cfg_scale", "cfg_scale_start": "cfg_scale_start",
                         "control_scale": "control_scale", "color_fix": "color_fix", "seed": "seed",
                         "latent_tile_size": "latent_tile_size", "min_size": "min_size",
                         "restoration_scale": "restoration_scale", "s_churn": "s_churn", "preset": "preset"},
    "RSVLUncertainty": {"combine": "combine", "guard": "guard", "feather": "guard_feather"},
}
# Settings no node input carries, and why.
CLI_ONLY_SETTINGS = {
    "samples": "in ComfyUI the samples are the IMAGE batch RSVLUncertainty receives (its size is N)",
    "uncertainty_band": "GeoTIFF outputs only; ComfyUI images have no georeferencing",
}


def setting_values(node_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A node's widget values -> the engine's plain setting values (combo text of a number back to a number)."""
    values = {}
    for name, setting in NODE_SETTINGS[node_id].items():
        if name not in inputs:
            continue
        value = inputs[name]
        if isinstance(value, str) and SETTINGS[setting].kind in (int, float):
            value = SETTINGS[setting].kind(value)
        values[setting] = value
    return values


def scheduler_from_inputs(**inputs: Any) -> StepSettings:
    """DynamicStepScheduler inputs -> step settings (threshold 0 = the preset's own)."""
    return schedule_from(setting_values("DynamicStepScheduler", inputs))


def stage1_options(schedule: StepSettings | None = None, **inputs: Any):
    """Stage1FidelitySR inputs (+ an optional schedule, which sets sampler, steps and cache) -> SR3 options."""
    return stage1_options_from(setting_values("Stage1FidelitySR", inputs), schedule)


def caption_options(**inputs: Any):
    """LlavaRSCaption inputs -> caption options (temperature 0 = greedy decoding)."""
    return caption_options_from(setting_values("LlavaRSCaption", inputs))


def refine_options(schedule: StepSettings | None = None, **inputs: Any):
    """ControlNetRefine inputs (+ an optional schedule, which sets steps and cache) -> refiner options."""
    return refine_options_from(setting_values("ControlNetRefine", inputs), schedule)


def stage1_settings_problem(tile_size: int | None, tile_overlap: int | None) -> str | None:
    """What is wrong with this pair of Stage1FidelitySR tile values (None = fine, not known yet, or not a problem
    of the pair).

    Run by the node's `validate_inputs`, so ComfyUI rejects the prompt before anything runs. ComfyUI lists the
    answer under each input the check names (and leaves those inputs' range checks to it), so only a problem of
    the two together is answered here, listed under both as either can fix it. A problem of one value (below
    zero, a tile_size under the smallest tile) is refused in one line when the node starts, before anything
    loads."""
    if None in (tile_size, tile_overlap) or tile_size < 0 or tile_overlap < 0:
        return None
    try:
        stage1_options(tile_size=tile_size, tile_overlap=0)
    except ValueError:
        return None  # tile_size alone is wrong: said once, by the node
    try:
        stage1_options(tile_size=tile_size, tile_overlap=tile_overlap)
    except ValueError as exc:
        return first_line(exc)
    return None


def node_label(display_name: str, unique_id: str | None = None) -> str:
    """How errors and warnings name a node: its display name and, inside a graph, its id ("... #4")."""
    return f"{display_name} #{unique_id}" if unique_id not in (None, "") else display_name


def describe_stage1_run(options, schedule: StepSettings | None, widget_sampler: str, widget_steps: int) -> str:
    """One line: what stage 1 ran (sampler, steps, cache, tiles) and whether a schedule replaced the widgets."""
    steps = options.total_steps
    line = f"ran: {options.sampler}, {steps} steps, cache {options.cache.mode if options.cache.enabled else 'off'}, " \
           + (f"tiles {options.tile_size}/{options.tile_overlap} px" if options.tile_size else "no tiling")
    if schedule is not None:
        widgets = f"{widget_sampler}/{widget_steps or 'default'}"
        line += f" (set by DynamicStepScheduler; this node's sampler/steps {widgets} were not used)"
    return line


def describe_one_pass_run(record: dict, scale: int) -> str:
    """One line: which one-pass model ran, how it was tiled and resampled; SR3's sampler settings unused."""
    tiling = record.get("tiling", {})
    tile = tiling.get("tile_size", 0)
    tiles = record.get("tiles", 1)
    how = f"{tiles} tile{'s' if tiles != 1 else ''} of up to {tile} input px" if tile else "whole image"
    if tiling.get("out_of_memory_at"):
        how += f" (halved after running out of memory with {tiling['out_of_memory_at']})"
    line = f"ran: {record.get('architecture', 'upscale model')} x{record.get('native_scale')} upscale model, " \
           f"one pass, {how}"
    if record.get("resampled"):
        line += f", resampled to x{scale} ({record.get('resample_filter')})"
    return line + "; sampler, steps and seed are not used by a one-pass model"


def describe_refine_run(index: int, report, options, schedule: StepSettings | None, widget_steps: int) -> str:
    """One line per refined image: working size, steps that ran, UNet calls and the step cache's decisions.

    With the cache off every step is computed, and the line says so (the cache log is empty then)."""
    steps = options.sampler.steps
    height, width = report.working_size
    if report.cache is not None and report.cache.decisions:
        cache = StepSettings.describe(report.cache)
    else:
        cache = f"off: {steps}/{steps} steps computed"
    line = f"image {index + 1}: {width}x{height} working size, {steps} steps, {report.unet_calls} UNet calls; " \
           f"cache: {cache}"
    if schedule is not None:
        line += f" (steps and cache set by DynamicStepScheduler; this node's steps {widget_steps} were not used)"
    return line


# Output-sized float32 buffers stage 1 holds at its peak (bicubic condition, noise / x_t, the blended
# result and its weights, the node's (B, H, W, C) copy) plus the copy the next node (SaveImage) makes: 6.
STAGE1_BUFFERS = 6
# The refiner's peak at the working size: the working image, its colour-fix reference, the decoded result,
# the blended tiles and the copies in and out of the node: 8 buffers of the working size.
REFINE_BUFFERS = 8
GIB = 1024 ** 3
MIB = 1024 ** 2


def size_guard(label: str, batch: int, height: int, width: int, out_height: int, out_width: int, buffers: int,
               free_bytes: int | None, what: str, tiles_off: bool = False) -> None:
    """Refuse, in one line and before anything is allocated, an output that cannot fit in memory.

    The estimate is `buffers` float32 RGB copies of the output; `free_bytes` is the host's free RAM; `tiles_off`:
    the stage runs untiled, so turning tiles on is advice too (never said when tiles are already on)."""
    need = batch * out_height * out_width * 3 * 4 * buffers
    if free_bytes is None or need <= free_bytes:
        return
    raise NodeError(
        f"{label}: {batch}x {width}x{height} -> {out_width}x{out_height} ({what}) needs about {need / GIB:.1f} GiB "
        f"of RAM, {free_bytes / GIB:.1f} GiB free: use a smaller scale, "
        + ("turn tiles on (tile_size > 0), " if tiles_off else "")
        + "crop or split the image (large scenes: `rsvl upscale --window-size` processes them in windows)"
    )


def as_list(value: Any) -> list:
    """An input of an `is_input_list` node as a list (a direct call may pass one value)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def first(value: Any) -> Any:
    """A widget of an `is_input_list` node: its one value (ComfyUI passes a list of one)."""
    return value[0] if isinstance(value, (list, tuple)) else value


def pair_captions(captions: list[str | None], images: int) -> list[str]:
    """One caption per image, in order: N captions for N images, or one caption for all of them.

    A single caption that holds BATCH_SEPARATOR lines (an older graph's joined batch caption) is split when
    that gives exactly one per image. Any other count is an error naming both counts."""
    texts = [(c or "").strip() for c in captions] or [""]
    if len(texts) == images:
        return texts
    if len(texts) == 1:
        parts = texts[0].split(BATCH_SEPARATOR)
        if images > 1 and len(parts) == images:
            return [p.strip() for p in parts]
        return texts * images
    raise NodeError(f"caption: {len(texts)} captions for {images} images; give one caption per image, or one "
                    f"for all")


def captions_text(captions: list[str]) -> str:
    """What LlavaRSCaption shows on the node: the caption, or one "image i:" line per image of a batch."""
    if len(captions) == 1:
        return captions[0]
    return "\n".join(f"image {i + 1}: {caption}" for i, caption in enumerate(captions))


def fit_latent_preview(refiner, image: torch.Tensor) -> LatentPreview | None:
    """A preview map for this refiner's VAE, from a <=128 px copy of the image (None if anything fails)."""
    try:
        small = image[:1].float()
        factor = 128 / max(small.shape[-2:])
        if factor < 1:
            size = (max(8, round(small.shape[-2] * factor / 8) * 8), max(8, round(small.shape[-1] * factor / 8) * 8))
        else:
            size = (max(8, small.shape[-2] // 8 * 8), max(8, small.shape[-1] // 8 * 8))
        small = torch.nn.functional.interpolate(small, size=size, mode="area")
        vae = refiner.vae
        with torch.inference_mode():
            latent = vae.encode(small.to(device=refiner.device, dtype=next(vae.parameters()).dtype), tile_size=0)
        return LatentPreview.fit(latent, small)
    except Exception as exc:  # a preview must never fail the run
        log.debug("rsvl: no latent preview map (%s)", exc)
        return None


@contextmanager
def user_errors(label: str) -> Iterator[None]:
    """Engine errors and bad settings -> one-line NodeError naming the node by `node_label` (its display name
    and id: ComfyUI runs a copy of the node class, so the class name would read "...Clone").
    Cancel and OOM pass untouched."""
    try:
        yield
    except (RsvlError, ValueError, FileNotFoundError) as exc:
        # our own one-line messages whole; an engine's or library's first line, capped
        message = str(exc).strip().splitlines()[0] if isinstance(exc, NodeError) else first_line(exc)
        raise NodeError(message if message.startswith(label) else f"{label}: {message}") from None




# A stage-1 run on the CPU expected to take longer than this gets a one-line warning with the estimate.
CPU_WARN_SECONDS = 60.0


def format_duration(seconds: float) -> str:
    """Seconds as "45 s", "12 min" or "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cpu_time_warning(label: str, seconds_left: float, total: int, elapsed_per_step: float) -> str | None:
    """The one-line CPU warning for a long stage-1 run (None when it is expected to finish soon)."""
    if seconds_left < CPU_WARN_SECONDS:
        return None
    return (f"{label}: running on the CPU: {total} steps at ~{elapsed_per_step:.1f} s/step, about "
            f"{format_duration(seconds_left)} left; for a quick result connect a DynamicStepScheduler with "
            f"ddim/dpmpp and fewer steps, or use a GPU")


def cpu_time_end_note(label: str, seconds: float, finished: bool) -> str:
    """The line that replaces a CPU time estimate on the node when the run ends: the frontend keeps the last
    progress text on the node until another arrives, so without it "about 6 min left" would stay after a
    Cancel (or after the run)."""
    how = "finished in" if finished else "stopped (cancelled or failed) after"
    return f"{label}: {how} {format_duration(seconds)}"


# The image the shipped templates' LoadImage names: the bundled sample, copied into ComfyUI's input folder.
SAMPLE_NAME = "rsvl_sample.png"
SAMPLE_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rsvl_core", "samples",
                             "osbs_029_lr100.png")


def provide_sample(input_dir: str, source: str = SAMPLE_SOURCE, name: str = SAMPLE_NAME) -> bool:
    """Copy the bundled sample to `input_dir/name` so a template runs on the first click; a file of that name
    already there (the user's own, or ours from before) is never touched. True when the copy was made."""
    target = os.path.join(input_dir, name)
    try:
        os.makedirs(input_dir, exist_ok=True)
        with open(source, "rb") as src, open(target, "xb") as dst:  # "x": fails if the file exists
            dst.write(src.read())
    except FileExistsError:
        return False
    except OSError as exc:  # a read-only input folder must not stop the pack from loading
        log.warning("rsvl: could not copy the sample image to %s (%s)", target, exc)
        return False
    return True
