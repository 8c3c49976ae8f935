"""Stage 2 end to end: load the refiner from the user's files and refine one stage-1 image.

`refine_image` is a numbered script in the diffusers pipeline style:
check options -> working size -> LQ latent -> text conditioning -> noise -> restore EDM sampling
(tiled over the latent when large) -> decode -> colour fix -> back to exactly the input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..cache.policy import CacheReport
from ..kit.errors import CheckpointError
from ..kit.image import bicubic_resize
from ..kit.noise import NoiseField, coordinate_noise_source
from ..kit.progress import ProgressCallback, report
from ..weights.checkpoint import own_module_memory, read_state_dict, reading_headers
from .colorfix import apply_color_fix
from .denoise import GuidedDenoiser
from .loading.loader import (
    EXPECTED_SUPIR,
    TEXT_PREFIX,
    VAE_PREFIX,
    load_unet_and_control,
    read_refiner_checkpoints,
    unet_and_control_to_single_file,
)
from .nets.cfg import ConditionedNetworks, Conditioning
from .nets.config import RefinerConfig
from .nets.control import GLVControl
from .nets.text import (
    SDXLTextEncoder,
    load_text_encoder_from_diffusers,
    load_text_encoder_from_single_file,
    sdxl_vector,
)
from .nets.unet import RefinerUNet
from .nets.vae import RefinerVAE, load_refiner_vae, load_refiner_vae_from_diffusers, resolve_vae_dtype
from .options import RefineOptions
from .sampler import StepRecord, sample_restore_edm


@dataclass
class Refiner:
    """The loaded stage-2 models."""

    unet: RefinerUNet
    control: GLVControl
    vae: RefinerVAE
    text: SDXLTextEncoder
    config: RefinerConfig
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def size_embed_dim(self) -> int:
        extra = self.config.adm_in_channels - self.text.pooled_dim
        if extra <= 0 or extra % 6:
            raise ValueError(
                f"the UNet's vector width {self.config.adm_in_channels} does not fit the text encoder's pooled width "
                f"{self.text.pooled_dim} plus 6 size embeddings"
            )
        return extra // 6

    def modules(self) -> dict[str, torch.nn.Module]:
        """The parts to place or offload, by name."""
        return {"unet": self.unet, "control": self.control, "vae": self.vae, "text": self.text}

    def to(self, device: torch.device | str) -> Refiner:
        for module in self.modules().values():
            module.to(device)
        return self


def load_refiner(sdxl: str | Path, supir: str | Path, dtype: torch.dtype = torch.float32,
                 vae_dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> Refiner:
    """Load the refiner from an SDXL checkpoint (single file or diffusers folder) and a SUPIR checkpoint.

    Args:
        sdxl: the SDXL base single file (`.safetensors`/`.ckpt`), or a diffusers SDXL folder.
        supir: the SUPIR checkpoint (v0Q or v0F) with the control network, connectors and denoise encoder.
        dtype: UNet, control network and text encoders (fp32, bf16 or fp16).
        vae_dtype: the VAE's precision (default: dtype, but fp16 runs in fp32: SDXL's VAE overflows in fp16).
    """
    vae_dtype = resolve_vae_dtype(vae_dtype or dtype)
    sdxl, supir = Path(sdxl), Path(supir)
    if sdxl.is_dir():
        return _load_from_diffusers_folder(sdxl, supir, dtype, vae_dtype, device)
    state, _ = read_refiner_checkpoints(sdxl, supir)
    parts = load_unet_and_control(state, sdxl, supir, dtype)
    staging = "meta" if reading_headers() else "cpu"  # a `headers_only` check builds everything on meta
    vae = load_refiner_vae(state, sdxl, dtype=vae_dtype, device=staging)
    text_state = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    text = load_text_encoder_from_single_file(text_state, sdxl, dtype=dtype, device=staging)
    del state
    refiner = Refiner(parts.unet, parts.control, vae, text, parts.config, {"sdxl": str(sdxl), "supir": str(supir)})
    return refiner.to(device)


def _load_from_diffusers_folder(folder: Path, supir: Path, dtype: torch.dtype, vae_dtype: torch.dtype,
                                device: torch.device | str) -> Refiner:
    """A diffusers SDXL folder (unet/, vae/, text_encoder*/) plus the SUPIR file."""
    from diffusers import UNet2DConditionModel

    from .loading.ldm_keys import ours_to_ldm

    unet_folder = folder / "unet"
    if not (unet_folder / "config.json").is_file():
        raise CheckpointError(folder, "has no unet/config.json", "a diffusers SDXL folder (unet/, vae/, text_encoder/)")
    base = own_module_memory(UNet2DConditionModel.from_pretrained(str(unet_folder), local_files_only=True))
    supir_state = read_state_dict(supir, EXPECTED_SUPIR)
    hidden = supir_state.get("model.diffusion_model.project_modules.0.mlp_shared.0.weight")
    config = replace(_config_from_diffusers_unet(base.config),
                     zero_sft_hidden=hidden.shape[0] if hidden is not None else 128)
    base_state = ours_to_ldm(base.state_dict(), config)
    state = {f"model.diffusion_model.{k}": v for k, v in base_state.items()}
    del base
    state.update(supir_state)
    parts = load_unet_and_control(state, folder, supir, dtype, config=config)
    vae = load_refiner_vae_from_diffusers(folder, supir_state, dtype=vae_dtype, device="cpu", denoise_path=supir)
    text = load_text_encoder_from_diffusers(folder, dtype=dtype, device="cpu")
    refiner = Refiner(parts.unet, parts.control, vae, text, config, {"sdxl": str(folder), "supir": str(supir)})
    return refiner.to(device)


def _config_from_diffusers_unet(cfg) -> RefinerConfig:
    widths = tuple(cfg["block_out_channels"])
    attention = tuple(2**i for i, kind in enumerate(cfg["down_block_types"]) if kind.startswith("CrossAttn"))
    depth = cfg["transformer_layers_per_block"]
    depth = tuple(depth) if isinstance(depth, list | tuple) else (depth,) * len(widths)
    heads = cfg["attention_head_dim"]
    heads = tuple(heads) if isinstance(heads, list | tuple) else (heads,) * len(widths)
    return RefinerConfig(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=cfg["layers_per_block"],
        attention_resolutions=attention, transformer_depth=depth, num_head_channels=widths[-1] // heads[-1],
        context_dim=cfg["cross_attention_dim"], adm_in_channels=cfg["projection_class_embeddings_input_dim"],
    )


def positive_prompt(caption: str, options: RefineOptions) -> str:
    """What conditions the refiner: "<caption> <positive prompt>" (either may be empty)."""
    return " ".join(part for part in (caption.strip(), options.positive_prompt.strip()) if part)


def working_size(height: int, width: int, min_size: int = 1024, unit: int = 64) -> tuple[int, int]:
    """The seed's rule: scale up so the short side is at least `min_size`, then round each side to `unit`."""
    factor = max(1.0, min_size / min(height, width)) if min_size else 1.0
    return (max(unit, round(height * factor / unit) * unit), max(unit, round(width * factor / unit) * unit))


@dataclass
class RefineReport:
    """What one refinement did (for sidecars, logs and the cache report)."""

    caption: str
    working_size: tuple[int, int]
    latent_tiles: int
    steps: list[StepRecord]
    unet_calls: int
    control_calls: int
    cache: CacheReport | None = None
    tiling: dict[str, dict] = field(default_factory=dict)  # per tiled part, `TileFit.record()`: the tile used


def refine_image(refiner: Refiner, image: torch.Tensor, caption: str, options: RefineOptions | None = None,
                 seed: int = 0, callback: ProgressCallback | None = None,
                 origin: tuple[int, int] | None = None) -> tuple[torch.Tensor, RefineReport]:
    """Refine one stage-1 image.

    Args:
        image: (1, 3, H, W) float in [0, 1], the stage-1 output.
        caption: the text describing it (the captioner's, or the user's).
        seed: seeds every random draw (initial noise and churn noise), drawn on the CPU: same result on any device.
        origin: the image's top-left (y, x) in a scene's output pixels: noise is then keyed by the latent cell's
            place in the scene (`noise.NoiseField`), so windows agree. The cell offset is this origin on the
            working grid (origin x working factor / 8, rounded): exact when that is whole, else within half a
            cell; windows of different sizes share cells only when their working factor is the same.
    Returns:
        ((1, 3, H, W) float32 in [0, 1], a RefineReport).
    """
    # 1. check inputs
    options = options or RefineOptions()
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    device = refiner.device

    # 2. working size (the seed's rule), multiples of 64
    work_h, work_w = working_size(height, width, options.min_size, options.size_unit)
    work = bicubic_resize(image.float().cpu(), (work_h, work_w)) if (work_h, work_w) != (height, width) else image
    work = work.float().to(device)

    # 3. LQ latent through the denoise encoder; its decode is the colour reference (as the seed does)
    # (each VAE direction keeps one tile for the run: halved once on out-of-memory, not at every call)
    encode_tiles = refiner.vae.encode_tiles(options.vae_encode_tile, extent=max(work_h, work_w))
    decode_tiles = refiner.vae.decode_tiles(options.vae_decode_tile,
                                            extent=max(work_h, work_w) // refiner.vae.downscale_factor)
    lq_latent, reference, x_center = lq_latents(refiner, work, options, encode_tiles, decode_tiles)

    # 4. text: "<caption> <positive prompt>" vs the negative prompt, same length for one CFG batch
    cond, uncond = conditioning(refiner, caption, options)
    networks = ConditionedNetworks(refiner.unet, refiner.control, cond, uncond, lq_latent)

    # 5. noise from one CPU generator (or keyed by scene position): initial noise first, then churn noise
    cells = None if origin is None else (round(origin[0] * work_h / height / 8), round(origin[1] * work_w / width / 8))
    churn_noise = refine_noise(seed, cells, device)
    noise = churn_noise(tuple(lq_latent.shape))

    # 6. sampling, tiled over the latent when it is larger than a tile, with the step cache if asked
    denoise = GuidedDenoiser(networks, options.sampler.steps, options.latent_tile_size, options.latent_tile_overlap,
                             options.tile_batch, options.cache)
    records: list[StepRecord] = []
    latent = sample_restore_edm(denoise, noise, x_center, options.sampler, churn_noise, callback, records=records)

    # 7. decode, colour fix against the stage-1 reference, back to exactly the input size
    report(callback, options.sampler.steps, options.sampler.steps, "vae decode")
    result = decoded(refiner, latent, reference, decode_tiles, options, (height, width))
    tiling = {"latent": denoise.fit.record(), "vae_encode": encode_tiles.record(),
              "vae_decode": decode_tiles.record()}
    return result, RefineReport(caption, (work_h, work_w), denoise.tile_count, records, networks.unet_calls,
                                networks.control_calls, denoise.cache.report, tiling)


def decoded(refiner: Refiner, latent: torch.Tensor, reference: torch.Tensor | None, decode_tiles,
            options: RefineOptions, size: tuple[int, int]) -> torch.Tensor:
    """The sampled latent decoded, colour-fixed against the stage-1 reference, back at exactly `size`, on the CPU."""
    result = refiner.vae.decode(latent, tiles=decode_tiles)
    if reference is not None:
        result = apply_color_fix(result, reference, options.color_fix)
    result = result.float().cpu()
    if tuple(result.shape[-2:]) != tuple(size):
        result = bicubic_resize(result, size)
    return result.clamp(0, 1)


def lq_latents(refiner: Refiner, work: torch.Tensor, options: RefineOptions, encode_tiles, decode_tiles
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The LQ latent through the denoise encoder, its decode as the colour reference (as the seed does; None with
    the colour fix off), and the restoration target (the reference encoded again when restoration guides)."""
    lq_latent = refiner.vae.encode_lq(work, tiles=encode_tiles)
    reference = None
    if options.color_fix != "none":
        reference = refiner.vae.decode(lq_latent, tiles=decode_tiles)
    x_center = lq_latent
    if options.sampler.restoration_scale > 0:
        colour_ref = reference if reference is not None else refiner.vae.decode(lq_latent, tiles=decode_tiles)
        x_center = refiner.vae.encode(colour_ref, tiles=encode_tiles)
    return lq_latent, reference, x_center


def conditioning(refiner: Refiner, caption: str, options: RefineOptions) -> tuple[Conditioning, Conditioning]:
    """Positive ("<caption> <positive prompt>") and negative conditioning on the refiner's device."""
    device = refiner.device
    cond_text, uncond_text = refiner.text.encode_pair([positive_prompt(caption, options)], [options.negative_prompt])

    def side(text) -> Conditioning:
        vector = sdxl_vector(text.pooled, refiner.size_embed_dim, options.original_size, (0, 0), options.target_size)
        return Conditioning(text.context.to(device), vector.to(device))

    return side(cond_text), side(uncond_text)


def refine_noise(seed: int, cells: tuple[int, int] | None, device: torch.device):
    """Draws of noise for one refinement: one CPU generator from `seed`, or keyed by the latent cells' place in a
    scene (`cells`: this image's offset), so windows agree."""
    if cells is not None:
        return coordinate_noise_source(NoiseField(seed), "refine", cells, device)
    generator = torch.Generator().manual_seed(seed)

    def churn_noise(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    return churn_noise


def refiner_single_files(refiner: Refiner) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(SDXL file, SUPIR file) state dicts in the original layouts, as the real releases split them."""
    from .nets.text import sdxl_text_encoders_to_single_file

    sdxl, supir = unet_and_control_to_single_file(refiner.unet, refiner.control)
    first_stage = refiner.vae.single_file_state()
    for key, value in first_stage.items():
        (supir if key.startswith(VAE_PREFIX + "denoise_encoder.") else sdxl)[key] = value
    sdxl.update(sdxl_text_encoders_to_single_file(refiner.text.text_encoder.state_dict(),
                                                  refiner.text.text_encoder_2.state_dict()))
    return sdxl, supir
