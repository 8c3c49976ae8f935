"""`rsvl upscale`: flags -> a RunConfig, the model files and job options -> `pipeline.run_job`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..kit.devices import DTYPES, resolve_device
from ..kit.errors import RsvlError
from ..memory.placement import PLACEMENTS
from ..weights.catalogue import MODELS_DIR_ENV
from .bars import say
from .commands import COMMANDS
from .settings import (
    REFINE_SETTINGS,
    RUN_SETTINGS,
    UNCERTAINTY_SETTINGS,
    add_setting_flags,
    config_from_args,
    cpu_advice,
    cpu_precision,
    setting_flag,
)

if TYPE_CHECKING:  # the engine loads when a command runs, not to parse its flags (a usage error answers at once)
    from ..jobs.inputs import JobOptions, JobSummary, SceneOptions
    from ..memory.plan import MemoryPlan
    from ..pipeline import Acceleration, RunConfig


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"folder with the weights (default: ${MODELS_DIR_ENV}, else ./models)")
    parser.add_argument("--comfyui-dir", type=Path, default=None,
                        help="a ComfyUI install searched after the models folder: models/rsvl/<stage>/, "
                             "models/checkpoints/, models/upscale_models/ (also $COMFYUI_DIR)")
    parser.add_argument("--stage1-model", "--sr3", dest="stage1_model", type=Path, default=None,
                        help="the stage-1 checkpoint: an SR3 generator (*_gen.pth) or any single-image SR model "
                             "spandrel recognises (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ...); overrides "
                             "<models-dir>/sr3")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    setting_flag(parser, "dtype")
    parser.add_argument("--accelerate", default="", metavar="LIST",
                        help="comma-separated execution switches, off by default: compile, cuda-graphs, static-cache, "
                             "fp8 (low memory), channels-last (benchmarks/README.md)")


def add_upscale_parser(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("upscale", help=COMMANDS["upscale"])
    add_job_arguments(up)
    add_memory_flag(up)


def add_memory_flag(parser: argparse.ArgumentParser) -> None:
    """--max-vram (the memory plan), on every command that loads models; from the one SETTINGS table."""
    setting_flag(parser, "max_vram")


def add_job_arguments(up: argparse.ArgumentParser) -> None:
    """Inputs, output, models, run settings and scene options: what `rsvl upscale` and `rsvl batch` share."""
    up.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image files or folders of images")
    up.add_argument("--input_img", "--input-img", action="append", type=Path, default=[],
                    help="an input image (seed-compatible alias; may repeat)")
    up.add_argument("--image_dir", "--image-dir", action="append", type=Path, default=[],
                    help="a folder of input images (seed-compatible alias; may repeat)")
    up.add_argument("-o", "--output", "--save_dir", dest="output", type=Path, required=True,
                    help="folder for the results (created if missing)")
    setting_flag(up, "scale")
    add_model_options(up)
    up.add_argument("--stage1-only", action="store_true", help="run stage 1 alone: no caption, no refiner")
    add_run_settings(up)
    setting_flag(up, "cog")
    add_scene_flags(up)
    add_refine_options(up)
    add_setting_flags(up.add_argument_group("uncertainty (README: Uncertainty)"), UNCERTAINTY_SETTINGS)
    up.add_argument("--no-hash", action="store_true",
                    help="leave the model files' sha256 out of the run record (computed once per file, then cached)")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    up.add_argument("--recursive", action="store_true",
                    help="search named folders' subfolders too; outputs go to the same subfolders of --output")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_scene_flags(parser: argparse.ArgumentParser) -> None:
    """How inputs are read (GeoTIFF bands, stretch) and windows for large scenes: upscale, batch and eval."""
    for name in ("bands", "stretch", "percentiles", "window_size", "window_overlap", "caption_per"):
        setting_flag(parser, name)


def scene_options_from_args(args: argparse.Namespace) -> SceneOptions:
    """--bands/--stretch/--percentiles and the window flags -> SceneOptions (validated when made)."""
    from ..jobs.inputs import scene_options_from
    from ..pipeline.options import SCENE_SETTINGS

    return scene_options_from({name: getattr(args, name) for name in SCENE_SETTINGS if hasattr(args, name)})


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    """Caption text, seed, stage-1 sampler, steps and tiling, caption settings, placement: every run's flags."""
    parser.add_argument("--caption", default=None,
                        help="use this text as the caption instead of running the captioner")
    add_setting_flags(parser, RUN_SETTINGS)
    parser.add_argument("--placement", choices=PLACEMENTS, default="auto",
                        help="one GPU: keep every model on it (resident), or each only while its stage runs "
                             "(sequential); auto decides from free memory (default)")


def add_refine_options(parser: argparse.ArgumentParser) -> None:
    """Stage-2 flags; None = the chosen preset's value (`paper` = the seed's infer.py settings)."""
    group = parser.add_argument_group("refiner (stage 2)")
    group.add_argument("--sdxl", type=Path, default=None,
                       help="the SDXL base single file or diffusers folder (overrides <models-dir>/sdxl)")
    group.add_argument("--supir", type=Path, default=None, help="the SUPIR checkpoint (overrides <models-dir>/supir)")
    group.add_argument("--llava", type=Path, default=None,
                       help="the captioner's model folder (overrides <models-dir>/llava)")
    group.add_argument("--adapter", type=Path, default=None,
                       help="the captioner's LoRA adapter folder (overrides <models-dir>/llava_adapter)")
    group.add_argument("--ckpt-pth", type=Path, default=None,
                       help="the seed's unzipped CKPT_PTH folder, searched after the models folder")
    add_setting_flags(group, REFINE_SETTINGS)
    group.add_argument("--vae-dtype", choices=sorted(DTYPES), default=None,
                       help="VAE precision (default: --dtype; fp16 runs in fp32 since SDXL's VAE overflows)")


def job_options_from_args(args: argparse.Namespace) -> JobOptions:
    from ..jobs.inputs import JobOptions

    return JobOptions(args.output, overwrite=args.overwrite, hash_models=not args.no_hash,
                      scene=scene_options_from_args(args), cog=args.cog, recursive=args.recursive)


def acceleration_from_args(args: argparse.Namespace) -> Acceleration:
    """--accelerate LIST (ValueError naming the unknown switch)."""
    from ..pipeline import Acceleration

    return Acceleration.from_names(args.accelerate)


def planned_config(config: RunConfig, sources: list[Path], window: int) -> tuple[RunConfig, MemoryPlan | None]:
    """--max-vram: the plan for the largest input (said on the start line) and the options it sets; else none."""
    from ..memory.plan import plan_for_run

    plan = plan_for_run(config, sources, window)
    if plan is None:
        return config, None
    say(plan.describe())
    return plan.apply(config), plan


def checked_run(args: argparse.Namespace) -> tuple[RunConfig, JobOptions, Acceleration]:
    """The run's values checked before the engine's heavy modules load (a bad value answers in about as long as a
    usage error); half precision on a CPU turned to fp32 and the CPU's cost said first."""
    device = resolve_device(args.device)
    cpu_precision(args, device.type, say)
    try:
        config, acceleration = config_from_args(args), acceleration_from_args(args)
        options = job_options_from_args(args)  # the job API (and so the stages' libraries) loads here
    except ValueError as exc:
        raise RsvlError(str(exc)) from None
    cpu_advice(args, device.type, say)
    return config, options, acceleration


def run_upscale(args: argparse.Namespace) -> JobSummary:
    config, options, acceleration = checked_run(args)
    from ..jobs.inputs import collect_inputs, locate_model_files
    from ..jobs.work import run_job
    from ..pipeline import PipelineModels
    from .progress import CliEvents

    inputs = [*args.inputs, *args.input_img, *args.image_dir]
    sources = collect_inputs(inputs, args.recursive)  # a missing input fails first, before any model is looked for
    device = resolve_device(args.device)
    files = locate_model_files(config, args.models_dir, args.stage1_model, args.sdxl, args.supir, notify=say,
                               captioner=args.llava, adapter=args.adapter, ckpt_dir=args.ckpt_pth,
                               comfyui_dir=args.comfyui_dir)
    config, plan = planned_config(config, sources, options.scene.windows.size)
    models = PipelineModels.from_files(files, device, args.dtype, args.placement, args.vae_dtype,
                                       acceleration, plan)
    return run_job(inputs, config, models, options, CliEvents(args.quiet, config.scale))
