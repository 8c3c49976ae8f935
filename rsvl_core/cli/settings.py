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
HALF = ("bf16", "fp16")
CPU_QUICK = "cpu-quick"
SLOW_ON_CPU = ("stage1_sampler", "stage1_steps", "refine_steps", "min_size")  # any given: the user chose the cost


def row(name: str):
    """A setting's row: the run's (SETTINGS) or how scenes are read (SCENE_SETTINGS)."""
    from ..pipeline.options import SCENE_SETTINGS

    return SETTINGS[name] if name in SETTINGS else SCENE_SETTINGS[name]


def flag_names(name: str) -> tuple[str, ...]:
    """The flags of a setting: --<name-with-dashes>, then its extra spellings."""
    return ("--" + name.replace("_", "-"), *row(name).flags)


def setting_flag(parser, name: str, *aliases: str, **kwargs: Any) -> None:
    """Add one setting's flag: type, default, choices and help from SETTINGS or SCENE_SETTINGS (None default = the
    preset's)."""
    spec = row(name)
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
    """The plain values of every setting the command has flags for (None = not given), with overrides. A flag left
    at its table default is "not given" where the preset sets that setting (cpu-quick's SR3 steps)."""
    from ..pipeline.options import PRESET_RUN_DEFAULTS

    values = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    values.update(overrides)
    for name in PRESET_RUN_DEFAULTS.get(values.get("preset") or "", {}):
        if values.get(name) == SETTINGS[name].default:
            values[name] = None
    return values


def cpu_precision(args: argparse.Namespace, device_type: str, say) -> None:
    """bf16/fp16 on a CPU run in fp32, said in one line: PyTorch emulates half precision there (stage 1 measured
    11x slower than fp32) and the result would differ from a GPU's anyway."""
    if device_type != "cpu":
        return
    for name in ("dtype", "vae_dtype"):
        if getattr(args, name, None) in HALF:
            say(f"--{name.replace('_', '-')} {getattr(args, name)} on a CPU: running in fp32 instead (half precision "
                "is emulated there, many times slower); it applies with --device cuda")
            setattr(args, name, "fp32")


def cpu_advice(args: argparse.Namespace, device_type: str, say) -> None:
    """On a CPU with the paper's cost (500 SR3 steps, 50 refiner steps at 1024 px): one line on what that means and
    the preset that runs in minutes (nothing is changed behind the user's back)."""
    if device_type != "cpu" or getattr(args, "preset", None) == CPU_QUICK \
            or any(getattr(args, name, None) not in (None, SETTINGS[name].default) for name in SLOW_ON_CPU):
        return
    stages = "500 SR3 steps" + ("" if getattr(args, "stage1_only", False) else " + 50 refiner steps at 1024 px")
    say(f"running on the CPU with the paper's settings ({stages}): expect tens of minutes per image; "
        f"--preset {CPU_QUICK} runs in minutes (dpmpp 20 SR3 steps, 8 refiner steps at the stage-1 size)")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (refused while parsing, before any engine loads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """The run configuration the flags describe (validated once, when it is made)."""
    if getattr(args, "stage1_only", False) and getattr(args, "caption", None) is not None:
        raise ValueError("--caption has no effect with --stage1-only (the caption only guides the refiner)")
    return RunConfig.from_values(stage1_only=getattr(args, "stage1_only", False),
                                 caption_text=getattr(args, "caption", None), **setting_values(args, **overrides))
