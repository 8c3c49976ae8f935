"""The refiner's VAE: SDXL's AutoencoderKL plus SUPIR's degradation-robust "denoise encoder".

SUPIR encodes the low-quality (stage-1) image with a second encoder, a fine-tuned copy of the VAE encoder that
maps degraded images to clean latents; it shares the VAE's `quant_conv`. The normal encoder and the decoder are
SDXL's. In a single-file checkpoint everything sits under `first_stage_model.` in the LDM layout; the SDXL file
has `encoder`, `decoder`, `quant_conv`, `post_quant_conv`, the SUPIR file adds `denoise_encoder`.

Precision: SDXL's VAE overflows in fp16 (NaN/black images), so fp16 requests run in fp32 (see
:func:`resolve_vae_dtype`); bf16 has fp32's range and is kept.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...kit.errors import CheckpointError
from ...kit.progress import ProgressCallback, report
from ...kit.tiling import TileFit, run_tiled
from ...weights.checkpoint import check_state, own_module_memory

if TYPE_CHECKING:  # annotations only; the classes are imported where they are built
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import Encoder

logger = logging.getLogger(__name__)

FIRST_STAGE_PREFIX = "first_stage_model."
EXPECTED = "an SDXL checkpoint with a first_stage_model VAE"
EXPECTED_DENOISE = "a SUPIR checkpoint (SUPIR-v0Q/v0F) with first_stage_model.denoise_encoder weights"
EXPECTED_DIFFUSERS = "a diffusers SDXL folder with vae/config.json and vae weights"

# Defaults for tiled encode (image pixels) and decode (latent pixels); 0 disables tiling.
ENCODE_TILE_SIZE = 1024
ENCODE_TILE_OVERLAP = 64
DECODE_TILE_SIZE = 128
DECODE_TILE_OVERLAP = 16
MIN_LATENT_TILE = 16  # latent pixels: where halving a tile after running out of memory stops (x 8 when encoding)

# Parts of the first stage: name in the file -> name in RefinerVAE's state (`vae.` holds the AutoencoderKL).
_CODERS = ("encoder", "decoder", "denoise_encoder")
_ATTENTION_PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTENTION_PROJECTIONS_BACK = {v: k for k, v in _ATTENTION_PROJECTIONS.items()}


def sdxl_vae_config() -> dict[str, Any]:
    """The packaged SDXL VAE config (AutoencoderKL kwargs), so no download is needed to build the model."""
    refine = __package__.rpartition(".")[0]  # refine/configs (this module is in refine/nets)
    text = resources.files(refine).joinpath("configs", "sdxl_vae.json").read_text(encoding="utf-8")
    return json.loads(text)


def resolve_vae_dtype(requested: torch.dtype) -> torch.dtype:
    """The dtype the VAE actually runs in: fp16 becomes fp32 (SDXL's VAE overflows to NaN in fp16)."""
    if requested == torch.float16:
        logger.info("VAE: float16 requested; running the VAE in float32 (SDXL's VAE overflows in fp16)")
        return torch.float32
    return requested


# ----------------------------------------------------------------------------------------------------------------
# Key conversion: LDM single-file layout <-> diffusers
# ----------------------------------------------------------------------------------------------------------------


def _resnet_part_to_ldm(rest: str) -> str:
    return "nin_shortcut" + rest[len("conv_shortcut"):] if rest.startswith("conv_shortcut") else rest


def _coder_key_to_ldm(key: str, levels: int) -> str | None:
    """A diffusers Encoder/Decoder key -> its LDM name (`levels` = number of resolution levels)."""
    if key.startswith(("conv_in.", "conv_out.")):
        return key
    if key.startswith("conv_norm_out."):
        return "norm_out." + key[len("conv_norm_out."):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"down.{m[1]}.block.{m[2]}.{_resnet_part_to_ldm(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"up.{levels - 1 - int(m[1])}.block.{m[2]}.{_resnet_part_to_ldm(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
        return f"mid.block_{int(m[1]) + 1}.{_resnet_part_to_ldm(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.group_norm\.(.+)", key):
        return f"mid.attn_1.norm.{m[1]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"mid.attn_1.{_ATTENTION_PROJECTIONS_BACK[m[1]]}.{m[2]}"
    return None


def _is_attention_weight(ldm_key: str) -> bool:
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key))


def _count_levels(keys: Iterable[str], pattern: str) -> int:
    return len({m[1] for k in keys if (m := re.match(pattern, k))})


def convert_first_stage(
    state_dict: dict[str, torch.Tensor], prefix: str = FIRST_STAGE_PREFIX, config: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """LDM single-file VAE weights -> (AutoencoderKL state, denoise-encoder Encoder state or None), diffusers names.

    The conversion is diffusers' own (`single_file_utils.convert_ldm_vae_checkpoint`, which also reshapes the
    attention 1x1 convs to linear weights); SUPIR's denoise encoder has the VAE encoder's layout, so it goes
    through the same converter under `encoder.`. Only keys under `prefix` are read (a whole SDXL/SUPIR
    checkpoint can be passed). diffusers skips keys it does not know, so every key is checked against our
    inverse table: raises ValueError naming any key that has no diffusers equivalent.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    first = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    config = config or infer_vae_config(first)
    own = {k: v for k, v in first.items() if not k.startswith("denoise_encoder.")}
    denoise = {"encoder." + k[len("denoise_encoder."):]: v for k, v in first.items()
               if k.startswith("denoise_encoder.")}
    vae_state = convert_ldm_vae_checkpoint(own, config)
    denoise_state = None
    if denoise:
        converted = convert_ldm_vae_checkpoint(denoise, config)
        denoise_state = {k[len("encoder."):]: v for k, v in converted.items() if k.startswith("encoder.")}
    covered = set(first_stage_to_single_file(vae_state, denoise_state, prefix=""))
    unknown = sorted(set(first) - covered)
    if unknown:
        raise ValueError(f"{len(unknown)} first-stage keys have no diffusers equivalent, e.g. {prefix}{unknown[0]}")
    return vae_state, denoise_state


def first_stage_to_single_file(
    vae_state: dict[str, torch.Tensor],
    denoise_state: dict[str, torch.Tensor] | None = None,
    prefix: str = FIRST_STAGE_PREFIX,
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_first_stage`: diffusers states -> LDM single-file keys under `prefix`.

    Attention projections become 1x1 convs [C, C, 1, 1], as in SDXL/SUPIR files. Raises ValueError on unknown keys.
    """
    levels = _count_levels(vae_state, r"decoder\.up_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    parts = [(k, v, None) for k, v in vae_state.items()]
    parts += [(k, v, "denoise_encoder") for k, v in (denoise_state or {}).items()]
    for key, value, forced_part in parts:
        if forced_part is None:
            part, _, rest = key.partition(".")
        else:
            part, rest = forced_part, key
        if forced_part is None and part in ("quant_conv", "post_quant_conv"):
            out[prefix + key] = value
            continue
        new = _coder_key_to_ldm(rest, levels) if part in _CODERS else None
        if new is None:
            unknown.append(key)
            continue
        if _is_attention_weight(new) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[f"{prefix}{part}.{new}"] = value
    if unknown:
        raise ValueError(f"{len(unknown)} VAE keys have no single-file equivalent, e.g. {unknown[0]}")
    return out


def infer_vae_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """AutoencoderKL kwargs from the shapes of LDM-layout VAE weights (with or without `first_stage_model.`).

    A full-size SDXL VAE gives exactly the packaged config; tiny test VAEs give their own channel counts. Values
    that shapes cannot tell (scaling factor, sample size, norm groups: 32 as in LDM) come from the SDXL config.
    Raises ValueError naming the key that is missing.
    """
    if any(k.startswith(FIRST_STAGE_PREFIX) for k in state_dict):
        state_dict = {k[len(FIRST_STAGE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(FIRST_STAGE_PREFIX)}

    def shape(key: str) -> torch.Size:
        if key not in state_dict:
            raise ValueError(f"cannot infer the VAE architecture: {FIRST_STAGE_PREFIX}{key} is missing")
        return state_dict[key].shape

    levels = _count_levels(state_dict, r"encoder\.down\.(\d+)\.")
    if levels == 0:
        raise ValueError(f"cannot infer the VAE architecture: no {FIRST_STAGE_PREFIX}encoder.down.* weights")
    blocks = [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(levels)]
    layers = len({m[1] for k in state_dict if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    config = sdxl_vae_config()
    config.update(
        in_channels=shape("encoder.conv_in.weight")[1],
        out_channels=shape("decoder.conv_out.weight")[0],
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[int(c) for c in blocks],
        layers_per_block=layers,
        latent_channels=shape("post_quant_conv.weight")[0],
    )
    if "encoder.mid.attn_1.q.weight" not in state_dict:
        config["mid_block_add_attention"] = False
    return config


def _check_keys_and_shapes(
    given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: str | Path, what: str
) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped keys (LDM names, as in the file).
    Attention projections may be stored as 1x1 convs or as linear weights: the same numbers either way."""

    def fits(key: str, got: tuple, want: tuple) -> bool:
        return got == want or (_is_attention_weight(key) and len(got) in (2, 4) and math.prod(got) == math.prod(want))

    check_state(expected, given, (path, EXPECTED), f"{what} weights", fits)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class RefinerVAE(nn.Module):
    """SDXL AutoencoderKL + SUPIR denoise encoder, with tiled encode/decode on [0, 1] images.

    Args:
        vae: the SDXL VAE (`scaling_factor` from its config scales the latents).
        denoise_encoder: SUPIR's degradation-robust encoder (same architecture as `vae.encoder`); None makes a deep
            copy of `vae.encoder` (what SUPIR does at construction, before its own weights are loaded).
    """

    def __init__(self, vae: AutoencoderKL, denoise_encoder: Encoder | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.denoise_encoder = denoise_encoder if denoise_encoder is not None else copy.deepcopy(vae.encoder)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RefinerVAE:
        """Build with random weights from AutoencoderKL kwargs (use under `torch.device("meta")` to skip init)."""
        from diffusers import AutoencoderKL  # on use: seconds to import

        return cls(AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")}))

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def downscale_factor(self) -> int:
        """Image pixels per latent pixel (8 for SDXL: one downsampling per level but the last)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def single_file_state(self) -> dict[str, torch.Tensor]:
        """This model's weights in the SDXL/SUPIR single-file layout (`first_stage_model.*`)."""
        return first_stage_to_single_file(self.vae.state_dict(), self.denoise_encoder.state_dict())

    # -- encode --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_lq(
        self,
        image: torch.Tensor,
        tile_size: int = ENCODE_TILE_SIZE,
        overlap: int = ENCODE_TILE_OVERLAP,
        callback: ProgressCallback | None = None,
        tiles: TileFit | None = None,
    ) -> torch.Tensor:
        """Latent of a low-quality image through the denoise encoder (posterior mode x scaling factor).

        This is SUPIR's `encode_first_stage_with_denoise`: the control latent and the restoration target.

        Args:
            image: (B, 3, H, W) in [0, 1]; H and W multiples of 8.
            tile_size, overlap: tile edge and overlap in image pixels (0 = one pass).
            tiles: the tile to use instead (`encode_tiles`), kept smaller across calls after out-of-memory.
        Returns:
            (B, 4, H/8, W/8) float32.
        """
        moments = self._moments(self.denoise_encoder, image, tile_size, overlap, callback, tiles)
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(moments).mode() * self.scaling_factor

    @torch.no_grad()
    def encode(
        self,
        image: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = False,
        tile_size: int = ENCODE_TILE_SIZE,
        overlap: int = ENCODE_TILE_OVERLAP,
        callback: ProgressCallback | None = None,
        tiles: TileFit | None = None,
    ) -> torch.Tensor:
        """Latent of an image through the normal SDXL encoder, x scaling factor.

        The posterior mode by default; `sample=True` draws from the posterior with `generator` (the seed samples,
        unseeded). Tiles blend the posterior parameters, so a sample does not depend on the tiling.

        Args:
            image: (B, 3, H, W) in [0, 1]; H and W multiples of 8.
            tile_size, overlap, tiles: as in `encode_lq`.
        Returns:
            (B, 4, H/8, W/8) float32.
        """
        moments = self._moments(self.vae.encoder, image, tile_size, overlap, callback, tiles)
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        posterior = DiagonalGaussianDistribution(moments)
        latent = posterior.sample(generator=generator) if sample else posterior.mode()
        return latent * self.scaling_factor

    def encode_tiles(self, tile_size: int = ENCODE_TILE_SIZE, overlap: int = ENCODE_TILE_OVERLAP,
                     extent: int = ENCODE_TILE_SIZE) -> TileFit:
        """The encoder's tiles (image pixels) for images whose larger side is `extent`; halved on out-of-memory."""
        factor = self.downscale_factor
        tile_size, overlap = _tile_options(tile_size, overlap, "tile_size (pixels)", multiple=factor)
        return TileFit(tile_size, overlap, extent, MIN_LATENT_TILE * factor, factor, stage="vae encode")

    def decode_tiles(self, tile_size: int = DECODE_TILE_SIZE, overlap: int = DECODE_TILE_OVERLAP,
                     extent: int = DECODE_TILE_SIZE) -> TileFit:
        """The decoder's tiles (latent pixels) for latents whose larger side is `extent`; halved on out-of-memory."""
        tile_size, overlap = _tile_options(tile_size, overlap, "tile_size (latent pixels)", multiple=1)
        return TileFit(tile_size, overlap, extent, MIN_LATENT_TILE, stage="vae decode")

    def _moments(
        self,
        encoder: Encoder,
        image: torch.Tensor,
        tile_size: int,
        overlap: int,
        callback: ProgressCallback | None,
        tiles: TileFit | None,
    ) -> torch.Tensor:
        """Posterior parameters (mean, logvar) of `image` through `encoder` + the shared quant_conv, tiled."""
        self._check_image(image)
        factor = self.downscale_factor
        tiles = tiles or self.encode_tiles(tile_size, overlap, max(image.shape[-2:]))

        def encode_tile(tile: torch.Tensor) -> torch.Tensor:
            moments = encoder(tile.to(self.dtype) * 2 - 1)
            return self.vae.quant_conv(moments) if self.vae.quant_conv is not None else moments

        return tiles.run(lambda tile_size, overlap: run_tiled(
            encode_tile, image.to(self.device), tile_size, overlap, scale=1 / factor,
            on_tile=lambda done, total: report(callback, done, total, "vae encode"),
        ))

    def _check_image(self, image: torch.Tensor) -> None:
        channels = self.vae.config.in_channels
        if image.ndim != 4 or image.shape[1] != channels:
            raise ValueError(f"VAE encode: image must be (B, {channels}, H, W), got {tuple(image.shape)}")
        factor = self.downscale_factor
        height, width = image.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"VAE encode: image size {height}x{width} must be a multiple of {factor} in both dimensions "
                "(pad or resize before encoding)"
            )

    # -- decode --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(
        self,
        latent: torch.Tensor,
        tile_size: int = DECODE_TILE_SIZE,
        overlap: int = DECODE_TILE_OVERLAP,
        callback: ProgressCallback | None = None,
        tiles: TileFit | None = None,
    ) -> torch.Tensor:
        """Image of a (scaled) latent: latent / scaling factor -> post_quant_conv -> decoder, clamped to [0, 1].

        Args:
            latent: (B, 4, h, w).
            tile_size, overlap: tile edge and overlap in latent pixels (0 = one pass).
            tiles: the tile to use instead (`decode_tiles`), kept smaller across calls after out-of-memory.
        Returns:
            (B, 3, 8h, 8w) float32 in [0, 1].
        """
        channels = self.latent_channels
        if latent.ndim != 4 or latent.shape[1] != channels:
            raise ValueError(f"VAE decode: latent must be (B, {channels}, h, w), got {tuple(latent.shape)}")

        def decode_tile(tile: torch.Tensor) -> torch.Tensor:
            z = tile.to(self.dtype) / self.scaling_factor
            if self.vae.post_quant_conv is not None:
                z = self.vae.post_quant_conv(z)
            return self.vae.decoder(z)

        tiles = tiles or self.decode_tiles(tile_size, overlap, max(latent.shape[-2:]))
        image = tiles.run(lambda tile_size, overlap: run_tiled(
            decode_tile, latent.to(self.device), tile_size, overlap, scale=self.downscale_factor,
            on_tile=lambda done, total: report(callback, done, total, "vae decode"),
        ))
        return ((image + 1) / 2).clamp(0, 1)


def _tile_options(tile_size: int, overlap: int, name: str, multiple: int) -> tuple[int, int]:
    """Validate tile size/overlap; sizes are rounded down to whole latent pixels (tile 0 keeps its overlap, used
    if the whole image runs out of memory and gets tiled)."""
    if tile_size < 0 or overlap < 0:
        raise ValueError(f"VAE {name} and overlap must be >= 0, got {tile_size} and {overlap}")
    overlap -= overlap % multiple
    if tile_size == 0:
        return 0, overlap
    tile_size -= tile_size % multiple
    if tile_size < 2 * multiple or overlap >= tile_size:
        raise ValueError(
            f"VAE {name} must be at least {2 * multiple} and larger than the overlap, got {tile_size} and {overlap}"
        )
    return tile_size, overlap


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def _first_stage_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """The VAE part of a checkpoint, without prefix: `first_stage_model.*`, or a bare LDM VAE file."""
    first = {k[len(FIRST_STAGE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(FIRST_STAGE_PREFIX)}
    if first:
        return first
    if "encoder.conv_in.weight" in state_dict and "decoder.conv_in.weight" in state_dict:
        return dict(state_dict)  # a standalone LDM VAE file (sdxl_vae.safetensors)
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in state_dict:
        raise CheckpointError(path, "is a diffusers-format VAE; load its folder with the diffusers loader", EXPECTED)
    raise CheckpointError(path, f"has no {FIRST_STAGE_PREFIX}* (VAE) weights", EXPECTED)


def _denoise_missing_message() -> str:
    return (
        f"has no {FIRST_STAGE_PREFIX}denoise_encoder weights; these come from the SUPIR checkpoint (SUPIR-v0Q/v0F): "
        "load it together with the SDXL checkpoint"
    )


def load_refiner_vae(
    state_dict: dict[str, torch.Tensor],
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    require_denoise_encoder: bool = True,
    config: dict[str, Any] | None = None,
    denoise_encoder: Encoder | None = None,
) -> RefinerVAE:
    """Build the refiner VAE from single-file weights (SDXL checkpoint merged with the SUPIR checkpoint's keys).

    Args:
        state_dict: the checkpoint's tensors; keys under `first_stage_model.` are used, the rest ignored.
        path: the file (for error messages).
        dtype: requested precision (fp16 runs as fp32, see :func:`resolve_vae_dtype`).
        require_denoise_encoder: raise when `first_stage_model.denoise_encoder.*` is absent. When False and absent,
            the denoise encoder is a copy of the VAE encoder (plain SDXL encoding of the LQ image).
        config: AutoencoderKL kwargs; inferred from the tensor shapes when None.
        denoise_encoder: a denoise encoder loaded before (SUPIR's, kept while the VAE weights are somebody
            else's): used as it is; `state_dict` then needs no denoise-encoder keys.
    Raises:
        CheckpointError: no VAE weights, missing/unexpected/misshapen keys (with the count and an example), or no
            denoise encoder when one is required.
    """
    first = _first_stage_weights(state_dict, path)
    if denoise_encoder is not None:
        first = {k: v for k, v in first.items() if not k.startswith("denoise_encoder.")}
    has_denoise = any(k.startswith("denoise_encoder.") for k in first)
    if require_denoise_encoder and not has_denoise and denoise_encoder is None:
        raise CheckpointError(path, _denoise_missing_message(), EXPECTED_DENOISE)
    if config is None:
        try:
            config = infer_vae_config(first)
        except ValueError as exc:
            raise CheckpointError(path, str(exc), EXPECTED) from None

    # 1. build without allocating, and list what the file must contain (in the file's own names)
    with torch.device("meta"):
        model = RefinerVAE.from_config(config)
    expected = first_stage_to_single_file(
        model.vae.state_dict(), model.denoise_encoder.state_dict() if has_denoise else None, prefix=""
    )
    _check_keys_and_shapes(first, expected, path, "first_stage_model (VAE)")

    # 2. convert and load
    vae_state, denoise_state = convert_first_stage(first, prefix="", config=config)
    model.vae.load_state_dict(vae_state, strict=True, assign=True)
    if denoise_encoder is not None:
        model.denoise_encoder = denoise_encoder
        return model.to(dtype=resolve_vae_dtype(dtype)).eval().requires_grad_(False)
    if denoise_state is None:
        logger.info("VAE: %s has no denoise encoder; using a copy of the VAE encoder for the LQ image", path)
        denoise_state = {k: v.clone() for k, v in model.vae.encoder.state_dict().items()}
    model.denoise_encoder.load_state_dict(denoise_state, strict=True, assign=True)
    return model.to(device=device, dtype=resolve_vae_dtype(dtype)).eval().requires_grad_(False)


def load_refiner_vae_from_diffusers(
    folder: str | Path,
    denoise_state: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    require_denoise_encoder: bool = True,
    denoise_path: str | Path | None = None,
) -> RefinerVAE:
    """Build the refiner VAE from a diffusers SDXL folder's `vae/` plus the SUPIR checkpoint's denoise encoder.

    Args:
        folder: the SDXL folder (with `vae/`) or the VAE folder itself; read with `local_files_only=True`.
        denoise_state: the SUPIR checkpoint's tensors (`first_stage_model.denoise_encoder.*` is used).
        denoise_path: the SUPIR file, for error messages.
    """
    folder = Path(folder)
    vae_folder = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    if not (vae_folder / "config.json").is_file():
        raise CheckpointError(folder, "has no vae/config.json", EXPECTED_DIFFUSERS)
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(vae_folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(vae_folder, f"cannot be loaded as an AutoencoderKL ({exc})", EXPECTED_DIFFUSERS) from None
    model = RefinerVAE(own_module_memory(vae))
    source = denoise_path if denoise_path is not None else "(SUPIR checkpoint)"
    prefix = FIRST_STAGE_PREFIX + "denoise_encoder."
    given = {k[len(FIRST_STAGE_PREFIX):]: v for k, v in (denoise_state or {}).items() if k.startswith(prefix)}
    if given:
        expected = first_stage_to_single_file({}, model.denoise_encoder.state_dict(), prefix="")
        _check_keys_and_shapes(given, expected, source, "first_stage_model.denoise_encoder")
        _, converted = convert_first_stage(given, prefix="", config=dict(model.vae.config))
        model.denoise_encoder.load_state_dict(converted, strict=True)
    elif require_denoise_encoder:
        raise CheckpointError(source, _denoise_missing_message(), EXPECTED_DENOISE)
    else:
        logger.info("VAE: no denoise encoder given; using a copy of the VAE encoder for the LQ image")
    return model.to(device=device, dtype=resolve_vae_dtype(dtype)).eval().requires_grad_(False)
