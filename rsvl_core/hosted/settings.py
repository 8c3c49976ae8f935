"""The settings a host's nodes carry: which engine setting (pipeline SETTINGS) each node input is, the run options
built from those inputs (the same builders as the command line's flags), and the lines that say what ran."""

from __future__ import annotations

from typing import Any

from ..pipeline import (
    SETTINGS,
    StepSettings,
    caption_options_from,
    refine_options_from,
    schedule_from,
    stage1_options_from,
)
from ..weights.checkpoint import first_line
from .handles import NodeError

BATCH_SEPARATOR = "\n---\n"  # how older versions joined a batch's captions; ControlNetRefine still splits on it

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
    "RSVLUpscaleScene": {"scale": "scale", "seed": "seed", "sampler": "stage1_sampler", "steps": "stage1_steps",
                         "tile_size": "tile_size", "tile_overlap": "tile_overlap", "preset": "preset",
                         "refine_steps": "refine_steps", "positive_prompt": "positive_prompt",
                         "negative_prompt": "negative_prompt", "min_size": "min_size"},
}
# The node inputs that carry how a scene is read and windowed (pipeline SCENE_SETTINGS rows, as `rsvl upscale`'s
# --bands ... --window-size flags): node input name -> row name.
NODE_SCENE_SETTINGS: dict[str, dict[str, str]] = {
    "RSVLLoadScene": {name: name for name in ("bands", "stretch", "percentiles")},
    "RSVLUpscaleScene": {name: name for name in ("window_size", "window_overlap", "caption_per", "bands", "stretch",
                                                 "percentiles", "cog")},
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

