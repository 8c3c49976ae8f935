"""SR3Config: the architecture of the SR3 UNet (stage 1), in the seed's terms and in ours."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The 12 noise-schedule buffers that the SR3 code base's GaussianDiffusion registers and saves
# next to the UNet weights in `*_gen.pth` (the *training* schedule; inference recomputes them).
SCHEDULE_BUFFER_NAMES: tuple[str, ...] = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


@dataclass(frozen=True)
class SR3Config:
    """Architecture of :class:`~rsvl_core.stage1.model.SR3UNet`.

    Defaults are the released 8x AID model (the seed's `configs/sr_sr3.json`, built with
    `define_G`, which uses 32 norm groups because the JSON does not set them).

    Args:
        in_channel: input channels; 6 = bicubic-upsampled condition (3) + noisy image (3).
        out_channel: predicted noise channels.
        inner_channel: width of the first level; also the noise-embedding width.
        channel_mults: width multiplier per resolution level.
        attention_levels: levels (0 = full resolution) whose blocks use self-attention. The seed
            expresses this as `attn_res` pixel sizes relative to `image_size`; see
            :meth:`from_seed_options`. The middle block always has attention.
        res_blocks: residual blocks per level on the way down (the way up has one more).
        norm_groups: GroupNorm groups (cannot be read from weights: it must come from a config).
        dropout: training-only; kept so a config round-trips. Has no parameters.
    """

    in_channel: int = 6
    out_channel: int = 3
    inner_channel: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    attention_levels: tuple[int, ...] = (3,)
    res_blocks: int = 1
    norm_groups: int = 32
    dropout: float = field(default=0.2, compare=False)  # training-only: no parameters, no effect in eval
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Check inputs (diffusers style): every mismatch names both sides.
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(sorted(int(a) for a in self.attention_levels)))
        if not self.channel_mults:
            raise ValueError("SR3Config.channel_mults must name at least one level")
        if self.res_blocks < 1:
            raise ValueError(f"SR3Config.res_blocks must be >= 1, got {self.res_blocks}")
        bad_levels = [a for a in self.attention_levels if not 0 <= a < len(self.channel_mults)]
        if bad_levels:
            raise ValueError(
                f"SR3Config.attention_levels {bad_levels} outside the {len(self.channel_mults)} levels "
                f"of channel_mults {self.channel_mults}"
            )
        for width in {self.inner_channel, *self.widths}:
            if width % self.norm_groups:
                raise ValueError(
                    f"SR3Config.norm_groups={self.norm_groups} does not divide channel width {width} "
                    f"(inner_channel={self.inner_channel}, channel_mults={self.channel_mults})"
                )

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each resolution level."""
        return tuple(self.inner_channel * m for m in self.channel_mults)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per level after the first)."""
        return 2 ** (len(self.channel_mults) - 1)

    @classmethod
    def from_seed_options(cls, options: dict[str, Any]) -> SR3Config:
        """Build from the SR3 code base's `model.unet` options (`channel_multiplier`, `attn_res`, ...).

        `attn_res` lists pixel sizes: level i works at `image_size / 2**i`, so attention goes to the
        levels whose size is in `attn_res`. `norm_groups` defaults to 32 as in `define_G`.
        """
        mults = tuple(options.get("channel_multiplier", options.get("channel_mults", cls.channel_mults)))
        image_size = int(options.get("image_size", 224))
        attn_res = options.get("attn_res", [28])
        attn_res = [attn_res] if isinstance(attn_res, int) else list(attn_res)
        levels = tuple(i for i in range(len(mults)) if image_size // (2**i) in attn_res)
        return cls(
            in_channel=int(options.get("in_channel", 6)),
            out_channel=int(options.get("out_channel", 3)),
            inner_channel=int(options.get("inner_channel", 64)),
            channel_mults=mults,
            attention_levels=levels,
            res_blocks=int(options.get("res_blocks", 1)),
            norm_groups=int(options.get("norm_groups", 32)),
            dropout=float(options.get("dropout", 0.0)),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SR3Config:
        """Accept our own layout (`attention_levels`) or the seed's (`attn_res` + `image_size`)."""
        if "attention_levels" in data:
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "extra"}
            return cls(**known)
        return cls.from_seed_options(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data["channel_mults"] = list(self.channel_mults)
        data["attention_levels"] = list(self.attention_levels)
        return data

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"sr3": self.to_dict()}, indent=2) + "\n")
