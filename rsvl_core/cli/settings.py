"""Command-line flags generated from the pipeline's SETTINGS table, and the run options they describe.

Every setting becomes `--<name-with-dashes>` (plus the spellings in its `flags`), with `dest` = the setting's
name, so `setting_values(args)` hands the pipeline exactly the plain values `RunConfig.from_values` takes.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..pipeline import SETTINGS, RunConfig

# Which settings each group of flags carries (scale and dtype are added where a command needs them).
RUN_SETTINGS = ("seed", "stage1_sampler", "stage1_steps", "tile_size", "tile_overlap", "tile_batch", "stage1_cache",
                "caption_max_tokens", "caption_temperature", "caption_prompt")
REFINE_SETTINGS = ("preset", "refine_steps", "cfg_scale", "cfg_scale_start", "control_scale", "restoration_scale",
                   "s_churn", "color_fix", "min_size", "latent_tile_size", "positive_prompt", "negative_prompt",
                   "cache", "cache_threshold")
UNCERTAINTY_SETTINGS = ("samples", "combine", "guard", "guard_feather", "uncertainty_band")
LONG_DEFAULT = 40  # longer default texts (prompts) are described, not printed, in --help


def flag_names(name: str) -> tuple[str, ...]:
    """The flags of a setting: --<name-with-dashes>, then its extra spellings."""
    return ("--" + name.replace("_", "-"), *SETTINGS[name].flags)


def setting_flag(parser, name: str, *aliases: str, **kwargs: Any) -> None:
    """Add one setting's flag: type, default, choices and help from SETTINGS (None default = the preset's)."""
    spec = SETTINGS[name]
    kwargs.setdefault("default", None if spec.preset_default else spec.default)
    if spec.kind is bool:  # a switch: present = True
        kwargs.setdefault("action", "store_true")
    else:
        kwargs.setdefault("type", spec.kind)
    if spec.choices is not None:
        kwargs.setdefault("choices", spec.choices)
    default = kwargs["default"]
    if default is None or default == "":
        shown = "the preset's" if spec.preset_default else "none"
    elif isinstance(default, str) and len(default) > LONG_DEFAULT:
        shown = "the seed's, see README"
    else:
        shown = default
    parser.add_argument(*flag_names(name), *aliases, dest=name, help=f"{spec.help} (default {shown})", **kwargs)


def add_setting_flags(parser, names: tuple[str, ...], aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """Add the flags of several settings, in order; `aliases` adds command-specific spellings."""
    for name in names:
        setting_flag(parser, name, *(aliases or {}).get(name, ()))


def setting_values(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """The plain values of every setting the command has flags for (None = not given), with overrides."""
    values = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    values.update(overrides)
    return values


def config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """The run configuration the flags describe (validated once, when it is made)."""
    if getattr(args, "stage1_only", False) and getattr(args, "caption", None) is not None:
        raise ValueError("--caption has no effect with --stage1-only (the caption only guides the refiner)")
    return RunConfig.from_values(stage1_only=getattr(args, "stage1_only", False),
                                 caption_text=getattr(args, "caption", None), **setting_values(args, **overrides))
