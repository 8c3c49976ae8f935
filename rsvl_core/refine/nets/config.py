"""Architecture of the refiner's UNet and control network, in the seed's (SGM) parameter names.

One frozen config describes both networks: GLVControl is a copy of the SDXL UNet's encoder, so it
shares every width. `from_sgm_params` reads the `network_config.params` block of the seed's yaml
(or the fixtures' config.json); `to_diffusers_unet_kwargs` gives the diffusers building blocks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # refine/configs


@dataclass(frozen=True)
class RefinerConfig:
    """SDXL-base UNet + SUPIR adapters.

    Args:
        in_channels / out_channels: latent channels (4).
        model_channels: width of level 0 (320 for SDXL).
        channel_mult: width multiplier per level ([1, 2, 4] for SDXL).
        num_res_blocks: ResBlocks per encoder level (the decoder has one more).
        attention_resolutions: downsampling factors (1, 2, 4, ...) whose levels have transformers.
        transformer_depth: transformer layers per level; the middle block uses the last entry.
        num_head_channels: attention head width (64 for SDXL).
        context_dim: cross-attention width (2048 = CLIP-L 768 + OpenCLIP-bigG 1280).
        adm_in_channels: width of the vector conditioning `y` (2816 = pooled 1280 + 6 x 256).
        zero_sft_hidden: hidden width of every ZeroSFT (128 in SUPIR, where it is hard-coded).
        zero_cross_attn_head_dim: head width of ZeroCrossAttn (64 in SUPIR: heads = query // 64).
        norm_groups: GroupNorm groups everywhere (32 in SGM).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2)
    transformer_depth: tuple[int, ...] = (1, 2, 10)
    num_head_channels: int = 64
    context_dim: int = 2048
    adm_in_channels: int = 2816
    zero_sft_hidden: int = 128
    zero_cross_attn_head_dim: int = 64
    norm_groups: int = 32
    extras: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # a set in meaning: keep one canonical order so configs compare equal
        object.__setattr__(self, "attention_resolutions", tuple(sorted(set(self.attention_resolutions), reverse=True)))
        levels = len(self.channel_mult)
        if levels < 2:
            raise ValueError(f"channel_mult needs at least 2 levels, got {list(self.channel_mult)}")
        if len(self.transformer_depth) != levels:
            raise ValueError(
                f"transformer_depth has {len(self.transformer_depth)} entries but channel_mult has {levels} levels"
            )
        if not self.has_attention(levels - 1):
            raise ValueError("the deepest level must have attention (the middle block is a transformer)")
        for level, width in enumerate(self.block_out_channels):
            if self.has_attention(level) and width % self.num_head_channels:
                raise ValueError(f"width {width} is not a multiple of num_head_channels {self.num_head_channels}")
            if width % self.norm_groups:
                raise ValueError(f"width {width} is not a multiple of norm_groups {self.norm_groups}")

    # --- derived layout -------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    def has_attention(self, level: int) -> bool:
        return 2**level in self.attention_resolutions

    def encoder_channels(self) -> list[int]:
        """Channels of each encoder output pushed on the skip stack (= each control feature but the last)."""
        widths = self.block_out_channels
        out = [widths[0]]
        for level, width in enumerate(widths):
            out += [width] * self.num_res_blocks
            if level != self.levels - 1:
                out.append(width)
        return out

    def control_channels(self) -> list[int]:
        """Channels of GLVControl's outputs: every encoder output, then the middle block."""
        return self.encoder_channels() + [self.block_out_channels[-1]]

    # --- (de)serialisation -----------------------------------------------------------------------
    @classmethod
    def from_sgm_params(cls, params: dict, zero_sft_hidden: int = 128) -> RefinerConfig:
        """From the seed's yaml `network_config.params` / `control_stage_config.params` dict."""
        if params.get("project_channel_scale", 2) != 2:
            raise ValueError("only project_channel_scale 2 is supported (the ZeroSFT width then equals the control's)")
        if params.get("legacy", False):
            raise ValueError("legacy=True (num_heads instead of num_head_channels) is not supported")
        depth = params.get("transformer_depth", 1)
        levels = len(params["channel_mult"])
        depth = tuple(depth) if isinstance(depth, list | tuple) else (depth,) * levels
        middle = params.get("transformer_depth_middle")
        if middle is not None and middle != depth[-1]:
            raise ValueError(f"transformer_depth_middle {middle} differs from the last level's depth {depth[-1]}")
        return cls(
            in_channels=params.get("in_channels", 4),
            out_channels=params.get("out_channels", 4),
            model_channels=params["model_channels"],
            channel_mult=tuple(params["channel_mult"]),
            num_res_blocks=params.get("num_res_blocks", 2),
            attention_resolutions=tuple(params["attention_resolutions"]),
            transformer_depth=depth,
            num_head_channels=params.get("num_head_channels", 64),
            context_dim=params["context_dim"],
            adm_in_channels=params["adm_in_channels"],
            zero_sft_hidden=zero_sft_hidden,
        )

    @classmethod
    def from_dict(cls, data: dict) -> RefinerConfig:
        names = {f.name for f in fields(cls)} - {"extras"}
        unknown = set(data) - names - {"_about"}
        if unknown:
            raise ValueError(f"unknown refiner config keys: {sorted(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        return cls(**kwargs)

    @classmethod
    def sdxl(cls) -> RefinerConfig:
        """The seed's real model (model_configs/juggernautXL.yaml), shipped as configs/supir_sdxl.json."""
        return cls.from_dict(json.loads((CONFIG_DIR / "supir_sdxl.json").read_text()))

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("extras")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def to_diffusers_unet_kwargs(self) -> dict:
        """Constructor kwargs of diffusers' UNet2DConditionModel with the same blocks."""
        widths = self.block_out_channels
        down = tuple("CrossAttnDownBlock2D" if self.has_attention(i) else "DownBlock2D" for i in range(self.levels))
        up = tuple(
            "CrossAttnUpBlock2D" if self.has_attention(i) else "UpBlock2D" for i in reversed(range(self.levels))
        )
        return {
            "sample_size": 128,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": down,
            "up_block_types": up,
            "block_out_channels": widths,
            "layers_per_block": self.num_res_blocks,
            "transformer_layers_per_block": self.transformer_depth,
            # diffusers names the *number of heads* attention_head_dim in this class
            "attention_head_dim": tuple(w // self.num_head_channels for w in widths),
            "cross_attention_dim": self.context_dim,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": self.adm_in_channels,
            "norm_num_groups": self.norm_groups,
            "norm_eps": 1e-5,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
        }
