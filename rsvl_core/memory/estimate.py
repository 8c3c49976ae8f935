"""Peak device memory of each stage, computed before running: weights + activations, on the CPU in seconds.

Each stage's models are built at full size from the real configs (`full_size.py`) with fake tensors
(`torch._subclasses.FakeTensorMode`: shapes, dtypes and storages without data), and the part of the stage
that sets its peak runs through the stage's own code under a `StorageTracker`, a dispatch mode that counts
the bytes of every tensor storage alive at each op:

- stage 1: the conditioning and sample images, then one SR3 evaluation over its tiles (tile size and batch as
  configured) and one sampler update;
- caption: the vision tower and projector on every anyres crop, then the language model's prefill over the
  whole prompt (image tokens included) into a KV cache, then the generated tokens appended to that cache;
- refine: working image, VAE encode through the denoise encoder and the colour reference decode (tiled as
  configured), the text encoders, one CFG step of control net + UNet over the latent tiles, the final decode
  and the colour fix.

Weights are counted separately, as placement puts them on the device: `resident` = every stage's weights for
the whole run; `sequential` = only the running stage's; with block swap (`block_swap.py`) the refiner's UNet
and control net hold only their non-block weights plus the K largest blocks. Weight storage (fp8 / int8 / int4,
`rsvl_core.memory.lowbit`) is applied to the fake models, so their bytes are the real layouts'.

What it leaves out: the CUDA context and allocator rounding/fragmentation (not in `max_memory_allocated`
either), cuDNN/cuBLAS workspaces, and kernel-internal scratch. The plan (`memory_plan.py`) keeps a margin.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..caption.config import CaptionOptions
from ..caption.storage import store_language_model
from ..refine.colorfix import apply_color_fix
from ..refine.fast_paths import store_fp8_weights
from ..refine.nets.cfg import ConditionedNetworks, Conditioning
from ..refine.nets.text import sdxl_vector
from ..refine.nets.vae import resolve_vae_dtype
from ..refine.refiner import RefineOptions, Refiner, working_size
from ..stage1.sampler import Stage1Options, make_eps_model, stage1_tile_fit
from ..stage1.stage import SR3Stage1
from .block_swap import swappable_blocks
from .lowbit import tensor_bytes
from .placement import parts

GiB = 2**30
STAGES = ("stage1", "caption", "refine")


class StorageTracker(TorchDispatchMode):
    """Counts the bytes of tensor storages alive while it is active, and their peak.

    Every tensor an op reads or writes is registered once (by its storage, so views and in-place ops add
    nothing) and unregistered when its storage is freed. Storages passed to `ignore` (weights already placed)
    are never counted. Works on real tensors and on fake ones alike.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._ignored: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def ignore(self, tensors: Iterable[torch.Tensor]) -> None:
        """Never count these tensors' storages (what was on the device before the tracked work)."""
        for tensor in tensors:
            for inner in _plain_tensors(tensor):
                self._ignored[inner.untyped_storage()] = True

    def _track(self, tensor: torch.Tensor) -> None:
        for inner in _plain_tensors(tensor):
            storage = inner.untyped_storage()
            if storage in self._sizes or storage in self._ignored:
                continue
            size = storage.nbytes()
            self._sizes[storage] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, size)

    def _freed(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for value in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out


def _plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding a tensor's data (a torchao wrapper's inner tensors, else itself)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor) and not isinstance(tensor, torch._subclasses.FakeTensor):
        names, _ = tensor.__tensor_flatten__()
        return [t for name in names for t in _plain_tensors(getattr(tensor, name))]
    return [tensor]


def weights_of(model: Any) -> list[torch.Tensor]:
    """Every parameter and buffer of a stage's declared modules."""
    return [t for module in parts(model) for t in (*module.parameters(), *module.buffers())]


def weight_bytes(model: Any) -> int:
    """Bytes of a stage's weights (quantized layouts counted as stored)."""
    return sum(tensor_bytes(t) for t in weights_of(model))


def activation_peak(model: Any, work: Callable[[], Any]) -> int:
    """Peak bytes of the tensors `work()` allocates on top of `model`'s weights (grad off)."""
    tracker = StorageTracker()
    tracker.ignore(weights_of(model))
    with torch.inference_mode(), tracker:
        work()
    return tracker.peak


# 1. what each stage does at its peak -------------------------------------------------------------------
def stage1_work(stage1: SR3Stage1, input_size: tuple[int, int], scale: int, options: Stage1Options) -> None:
    """SR3 stage 1 at its peak: conditioning + sample images, one tiled UNet evaluation, one update."""
    height, width = input_size[0] * scale, input_size[1] * scale
    unet = stage1.model.unet
    device = next(unet.parameters()).device
    condition = torch.zeros(1, 3, height, width, device=device)
    eps_model = make_eps_model(unet, condition, stage1_tile_fit(options, height, width), options.tile_batch)
    sample = torch.zeros(1, 3, height, width, device=device)
    # what the ancestral sampler keeps beside x_t while the UNet runs: the step's noise draw, the previous
    # sample and the x0 estimate (seen in a real run of upscale_stage1 under the tracker)
    kept = [torch.zeros_like(sample) for _ in range(3)]
    eps = eps_model(sample, 0.5)
    sample = sample - eps * 0.1  # the sampler's update: the next sample exists beside the old one
    del kept


def one_pass_work(stage1: Any, input_size: tuple[int, int], options: Stage1Options) -> None:
    """A one-pass (spandrel) stage 1 at its peak: its largest tile through the network (the blend buffers of the
    output are the run's images, counted by the caller)."""
    tiling = stage1.tiling(options)
    height, width = (min(side, tiling.tile_size) if tiling.tile_size else side for side in input_size)
    network = stage1.model.descriptor.model
    weight = next(network.parameters())
    tile = torch.zeros(tiling.tile_batch, 3, height, width, device=weight.device, dtype=weight.dtype)
    network(tile)


def caption_prompt_shape(processor: Any, image_size: tuple[int, int], options: CaptionOptions,
                         prompt_text: str) -> tuple[int, tuple[int, ...]]:
    """(prompt tokens incl. image tokens, pixel_values shape) of one caption call (the processor, on the CPU)."""
    from PIL import Image

    inputs = processor(images=Image.new("RGB", (image_size[1], image_size[0])), text=prompt_text,
                       return_tensors="pt")
    return int(inputs["input_ids"].shape[1]), tuple(inputs["pixel_values"].shape)


def caption_work(model: Any, image_size: tuple[int, int], prompt_tokens: int, pixel_shape: tuple[int, ...],
                 new_tokens: int) -> None:
    """LLaVA-NeXT at its peak: the stage-1 image turned to 8 bits for the processor, vision tower + projector on
    every crop, prefill of the whole prompt into the KV cache (only the last position's logits, as generate
    asks), then the generated tokens appended."""
    from transformers import DynamicCache

    vlm = model.model
    dtype = next(p for p in vlm.multi_modal_projector.parameters()).dtype
    device = next(vlm.multi_modal_projector.parameters()).device
    image = torch.zeros(1, 3, *image_size, device=device)
    as_bytes = image[0].float().clamp(0, 1).mul(255).round().to(torch.uint8)  # `image.to_uint8`, for PIL
    pixels = torch.zeros(*pixel_shape, dtype=dtype, device=device).flatten(0, 1)
    layer = model.config.vision_feature_layer
    hidden = vlm.vision_tower(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
    features = vlm.multi_modal_projector(hidden)
    width = model.config.text_config.hidden_size
    embeds = torch.zeros(1, prompt_tokens, width, dtype=features.dtype, device=device)
    del hidden, pixels, as_bytes
    cache = DynamicCache(config=model.config.text_config)
    out = vlm.language_model(inputs_embeds=embeds, cache=cache, use_cache=True)
    logits = model.lm_head(out.last_hidden_state[:, -1:]).float()
    del out, embeds, features
    if new_tokens > 1:
        more = torch.zeros(1, new_tokens - 1, width, dtype=dtype, device=device)
        out = vlm.language_model(inputs_embeds=more, cache=cache, use_cache=True)
        logits = model.lm_head(out.last_hidden_state[:, -1:]).float()
    del logits


def _one_step(networks: ConditionedNetworks, latent: torch.Tensor, options: RefineOptions) -> torch.Tensor:
    """One guided step's network work: control net + UNet on the CFG batch of `tile_batch` latent tiles (the
    largest call `GuidedDenoiser` makes), the CFG mix, and the blended full-latent result."""
    height, width = latent.shape[-2:]
    tile = options.latent_tile_size or max(height, width)
    tiles = 1 if tile >= max(height, width) else options.tile_batch
    x_in = torch.zeros(2 * tiles, latent.shape[1], min(tile, height), min(tile, width), device=latent.device)
    timesteps = torch.full((2 * tiles,), 500, dtype=torch.long, device=latent.device)
    lq = networks.lq_latent[..., :x_in.shape[-2], :x_in.shape[-1]].repeat(tiles, 1, 1, 1)
    eps = networks(x_in, timesteps, options.sampler.control_scale, lq).float()
    uncond, cond = eps.chunk(2)
    guided = uncond + (cond - uncond) * options.sampler.cfg_scale
    blended = torch.zeros_like(latent)
    blended[..., :guided.shape[-2], :guided.shape[-1]] += guided[:1]
    return blended


def refine_work(refiner: Refiner, image_size: tuple[int, int], options: RefineOptions, caption: str = "") -> None:
    """refine_image at its peak: steps 2-7 of it with one sampler step (`refiner.refine_image`)."""
    device = refiner.device
    work_h, work_w = working_size(*image_size, options.min_size, options.size_unit)
    work = torch.zeros(1, 3, work_h, work_w, device=device)
    encode_tiles = refiner.vae.encode_tiles(options.vae_encode_tile, extent=max(work_h, work_w))
    decode_tiles = refiner.vae.decode_tiles(options.vae_decode_tile,
                                            extent=max(work_h, work_w) // refiner.vae.downscale_factor)
    lq_latent = refiner.vae.encode_lq(work, tiles=encode_tiles)
    reference = refiner.vae.decode(lq_latent, tiles=decode_tiles) if options.color_fix != "none" else None
    positive = " ".join(p for p in (caption.strip(), options.positive_prompt.strip()) if p)
    cond_text, uncond_text = refiner.text.encode_pair([positive], [options.negative_prompt])
    size_dim = refiner.size_embed_dim

    def side(text: Any) -> Conditioning:
        vector = sdxl_vector(text.pooled, size_dim, options.original_size, (0, 0), options.target_size)
        return Conditioning(text.context.to(device), vector.to(device))

    networks = ConditionedNetworks(refiner.unet, refiner.control, side(cond_text), side(uncond_text), lq_latent)
    latent = torch.zeros_like(lq_latent)
    latent = latent + _one_step(networks, latent, options) * 0.1
    result = refiner.vae.decode(latent, tiles=decode_tiles)
    if reference is not None:
        result = apply_color_fix(result, reference, options.color_fix)
    result.float().cpu()


# 2. the estimate ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Storage:
    """How the captioner's language model and the refiner's UNet + control net store their weights."""

    caption: str = "none"   # none (as loaded) | fp8 | int8 | int4 (rsvl_core.memory.lowbit)
    refine: str = "none"    # none | fp8


@dataclass(frozen=True)
class MemorySetting:
    """What decides the peaks: input size, the run's stage options, dtype, storage, placement, block swap."""

    input_size: tuple[int, int] = (28, 28)
    scale: int = 8
    dtype: torch.dtype = torch.bfloat16
    stage1: Stage1Options = field(default_factory=Stage1Options)
    caption: CaptionOptions | None = field(default_factory=CaptionOptions)  # None: no captioner runs
    refine: RefineOptions | None = field(default_factory=RefineOptions)
    storage: Storage = field(default_factory=Storage)
    placement: str = "sequential"  # resident | sequential
    swap_blocks: int = 0           # 0: the refiner's UNet and control net whole; K: at most K blocks on the device
    only: tuple[str, ...] = ()     # the stages that run (empty: what the options above run; `rsvl caption`: caption)

    @property
    def stage1_size(self) -> tuple[int, int]:
        return self.input_size[0] * self.scale, self.input_size[1] * self.scale


@dataclass(frozen=True)
class StageMemory:
    """One stage's predicted peak: its weights on the device, other stages' resident weights, activations."""

    stage: str
    weights: int
    other_weights: int
    activations: int

    @property
    def peak(self) -> int:
        return self.weights + self.other_weights + self.activations


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peaks of one setting, per stage in the order they run; `peak` is the run's."""

    setting: MemorySetting
    stages: dict[str, StageMemory]

    @property
    def peak(self) -> int:
        return max(s.peak for s in self.stages.values())

    def table(self) -> str:
        """The per-stage table (GiB), as the tests print it and the README shows it."""
        lines = ["| stage | weights | other stages' weights | activations | peak |", "|---|---:|---:|---:|---:|"]
        for s in self.stages.values():
            lines.append(f"| {s.stage} | {s.weights / GiB:.2f} | {s.other_weights / GiB:.2f} | "
                         f"{s.activations / GiB:.2f} | {s.peak / GiB:.2f} |")
        return "\n".join(lines)

    def record(self) -> dict:
        """For the run record: the predicted peak and each stage's, in bytes."""
        return {"predicted_peak_bytes": self.peak,
                "stages": {name: s.peak for name, s in self.stages.items()},
                "placement": self.setting.placement, "swap_blocks": self.setting.swap_blocks,
                "storage": {"caption": self.setting.storage.caption, "refine": self.setting.storage.refine}}


def fake_copy(model: Any, fake_mode, dtype: torch.dtype | None = None) -> Any:
    """A copy of a stage model whose weights are fake tensors on the CPU (shapes and dtypes kept).

    A loaded model is copied with its weights on the meta device (no weight data is copied): estimating with a
    multi-GB model held by a host costs no second copy of it. `dtype`: its floating weights in that dtype."""
    meta = copy.deepcopy(model, meta_memo(model, dtype)) if not _is_meta(model) else model
    with fake_mode:
        for module in parts(meta):
            module.to_empty(device="cpu")
    return meta


def meta_memo(model: Any, dtype: torch.dtype | None = None) -> dict[int, Any]:
    """A deepcopy memo mapping each weight of the model's declared modules to an empty copy on the meta device
    (floating weights in `dtype` when given)."""
    memo: dict[int, Any] = {}
    for module in parts(model):
        for tensor in (*module.parameters(), *module.buffers()):
            cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            meta = tensor.detach().to("meta", dtype=cast)
            memo[id(tensor)] = torch.nn.Parameter(meta, tensor.requires_grad) \
                if isinstance(tensor, torch.nn.Parameter) else meta
    return memo


def _is_meta(model: Any) -> bool:
    return all(t.device.type == "meta" for t in weights_of(model))


def apply_storage(stage: str, model: Any, storage: Storage, dtype: torch.dtype, fake: bool = False) -> None:
    """Apply the setting's weight storage to a stage model, in place (`fake`: its weights are fake tensors)."""
    if stage == "caption" and storage.caption != "none":
        # torchao's int8 does not run on fake tensors; fp8 stores the same bytes (1 per weight + a scale per row)
        fake_int8 = storage.caption == "int8" and fake
        store_language_model(model.model, "fp8" if fake_int8 else storage.caption, dtype)
    if stage == "refine" and storage.refine == "fp8":
        store_fp8_weights(model.unet, dtype)
        store_fp8_weights(model.control, dtype)


class Estimator:
    """Per-stage peaks for settings; fake models are built once per (stage, storage) and reused.

    `models` maps a stage to a model to estimate with (e.g. a tiny real model, made fake here); absent stages
    are built at full size from the real configs.
    """

    def __init__(self, models: dict[str, Any] | None = None) -> None:
        self.given = models or {}
        self.fake_mode = torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True)
        self._models: dict[tuple, Any] = {}
        self._activations: dict[tuple, int] = {}

    def model(self, stage: str, storage: Storage, dtype: torch.dtype) -> Any:
        key = (stage, storage.caption if stage == "caption" else storage.refine if stage == "refine" else "", dtype)
        if key not in self._models:
            base = self.given.get(stage)
            if base is None:
                base = _full_on_meta(stage, dtype)
            fake = fake_copy(base, self.fake_mode, dtype)
            with self.fake_mode:
                apply_storage(stage, fake, storage, dtype, fake=True)
            self._models[key] = fake
        return self._models[key]

    def stage_weights(self, stage: str, setting: MemorySetting) -> int:
        """Bytes of a stage's weights on the device while it runs (block swap counted for the refiner)."""
        model = self.model(stage, setting.storage, setting.dtype)
        total = weight_bytes(model)
        if stage == "refine" and setting.swap_blocks > 0:
            blocks = swappable_blocks(model)
            sizes = sorted((weight_bytes(b) for b in blocks), reverse=True)
            total -= sum(sizes) - sum(sizes[:setting.swap_blocks])
        return total

    def activations(self, stage: str, setting: MemorySetting) -> int:
        key = (stage, setting.storage, setting.dtype, _work_key(stage, setting))
        if key not in self._activations:
            model = self.model(stage, setting.storage, setting.dtype)
            with self.fake_mode:
                self._activations[key] = activation_peak(model, lambda: self._work(stage, model, setting))
        return self._activations[key]

    def _work(self, stage: str, model: Any, setting: MemorySetting) -> None:
        if stage == "stage1" and getattr(model, "kind", "sr3") != "sr3":
            one_pass_work(model, setting.input_size, setting.stage1)
        elif stage == "stage1":
            stage1_work(model, setting.input_size, setting.scale, setting.stage1)
        elif stage == "caption":
            tokens, pixels = self.prompt_shape(model, setting)
            caption_work(model.model, setting.stage1_size, tokens, pixels, setting.caption.max_new_tokens)
        else:
            refine_work(model, setting.stage1_size, setting.refine)

    def prompt_shape(self, captioner, setting: MemorySetting) -> tuple[int, tuple[int, ...]]:
        """Prompt length and crops of one caption (the processor runs on real data, outside fake mode)."""
        with torch._subclasses.fake_tensor.unset_fake_temporarily():
            return caption_prompt_shape(captioner.processor, setting.stage1_size, setting.caption,
                                        captioner.prompt_text(setting.caption.prompt))

    def estimate(self, setting: MemorySetting) -> MemoryEstimate:
        """Every stage the setting runs (stage 1 alone when `refine` is None; no caption when `caption` is)."""
        stages = list(setting.only) or [s for s in STAGES if s == "stage1" or setting.refine is not None
                                        and (s == "refine" or setting.caption is not None)]
        weights = {s: self.stage_weights(s, setting) for s in stages}
        out = {}
        for stage in stages:
            others = sum(w for s, w in weights.items() if s != stage) if setting.placement == "resident" else 0
            out[stage] = StageMemory(stage, weights[stage], others, self.activations(stage, setting))
        return MemoryEstimate(setting, out)


def _work_key(stage: str, setting: MemorySetting) -> tuple:
    if stage == "stage1":
        return (setting.input_size, setting.scale, setting.stage1.tile_size, setting.stage1.tile_overlap,
                setting.stage1.tile_batch)
    if stage == "caption":
        return (setting.stage1_size, setting.caption.max_new_tokens, setting.caption.prompt)
    r = setting.refine
    return (setting.stage1_size, r.min_size, r.latent_tile_size, r.latent_tile_overlap, r.tile_batch,
            r.vae_encode_tile, r.vae_decode_tile, r.color_fix)


def _full_on_meta(stage: str, dtype: torch.dtype) -> Any:
    from ..pipeline.full_size import full_captioner, full_refiner, full_stage1

    if stage == "refine":  # the VAE in the dtype the pipeline gives it (fp16 runs in fp32: SDXL's VAE overflows)
        return full_refiner("meta", dtype, resolve_vae_dtype(dtype))
    return {"stage1": full_stage1, "caption": full_captioner}[stage]("meta", dtype)


_ESTIMATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FULL_SIZE: list[Estimator] = []  # built on first use: a FakeTensorMode imports torch._dynamo (seconds)


def stage_activations(stage: str, model: Any, setting: MemorySetting) -> int:
    """Peak activation bytes of one image through this very model (its fake copy, built once per model): what a
    host's memory manager is asked to keep free beside the weights, and what a CPU run needs in RAM. `model`
    None: the full-size model of the real configs, in the setting's dtype (a model that is built only when
    placed, e.g. our refiner over the SDXL a host holds)."""
    if model is None:
        if not _FULL_SIZE:
            _FULL_SIZE.append(Estimator())
        return _FULL_SIZE[0].activations(stage, setting)
    try:
        estimator = _ESTIMATORS.get(model)
    except TypeError:  # not weak-referenceable: estimated without a cache
        estimator = None
    if estimator is None:
        estimator = Estimator({stage: model})
        try:
            _ESTIMATORS[model] = estimator
        except TypeError:
            pass
    dtype = next((t.dtype for t in weights_of(model) if t.is_floating_point()), torch.float32)
    return estimator.activations(stage, replace(setting, dtype=dtype))
