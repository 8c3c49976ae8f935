"""`rsvl caption IMAGE... --models-dir DIR`: describe images with the captioner (LLaVA-NeXT + LoRA).

The captioner is found where `rsvl upscale` finds it (the one weights lookup), and the images are read as
`rsvl upscale` reads them (`pipeline.caption_job`, run by the job loop of `rsvl upscale`: GeoTIFF bands and
stretch, large scenes as an overview; with -o FILE, a rerun skips the inputs FILE's record already has).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..kit.errors import RsvlError
from ..pipeline.options import ATTENTIONS, QUANTIZATIONS
from ..weights.catalogue import MODELS_DIR_ENV
from .bars import say
from .commands import COMMANDS
from .settings import add_setting_flags, cpu_precision, setting_flag, setting_values

if TYPE_CHECKING:  # the engine loads when the command runs, not to parse its flags
    from ..jobs.work import CaptionSummary
    from ..memory.plan import MemoryPlan
    from ..pipeline import PipelineModels


def add_caption_parser(sub: argparse._SubParsersAction) -> None:
    cap = sub.add_parser("caption", help=COMMANDS["caption"])
    cap.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    cap.add_argument("--models-dir", type=Path, default=None,
                     help=f"folder with llava/ (and optionally llava_adapter/), searched first; then "
                          f"${MODELS_DIR_ENV}, ./models, $COMFYUI_DIR and the seed's CKPT_PTH, as `rsvl upscale` does")
    cap.add_argument("--llava", type=Path, default=None, help="the model folder (overrides <models-dir>/llava)")
    cap.add_argument("--adapter", type=Path, default=None,
                     help="the LoRA adapter folder (overrides <models-dir>/llava_adapter)")
    cap.add_argument("--ckpt-pth", type=Path, default=None,
                     help="the seed's unzipped CKPT_PTH folder (its Llava-next/ adapter), searched after the models "
                          "folder")
    cap.add_argument("--comfyui-dir", type=Path, default=None,
                     help="a ComfyUI install whose models/rsvl/llava is searched too (also $COMFYUI_DIR)")
    cap.add_argument("--no-adapter", action="store_true", help="caption with the base model only")
    cap.add_argument("--merge-adapter", action="store_true", help="merge the LoRA into the weights (faster)")
    cap.add_argument("-o", "--output", type=Path, default=None,
                     help="write `name: caption` lines to this file instead of printing them (a record of them "
                          "goes beside it, FILE.json: a rerun with the same settings skips the inputs in it)")
    cap.add_argument("--overwrite", action="store_true",
                     help="caption again the inputs --output's record already has (default: skip them)")
    add_setting_flags(cap, ("caption_prompt", "caption_temperature", "caption_max_tokens", "seed"),
                      aliases={"caption_prompt": ("--prompt",), "caption_max_tokens": ("--max-new-tokens",),
                               "caption_temperature": ("--temperature",)})
    cap.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling (temperature 0)")
    cap.add_argument("--bands", default=None, help="GeoTIFF bands to use as R,G,B, 1-based (as `rsvl upscale`)")
    cap.add_argument("--stretch", choices=("percentile", "none"), default=None,
                     help="GeoTIFF value scaling (as `rsvl upscale`)")
    cap.add_argument("--percentiles", default=None, help="low,high percentiles of the stretch (default 2,98)")
    cap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    setting_flag(cap, "dtype")
    setting_flag(cap, "max_vram")
    cap.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                     help="8bit/4bit need the optional bitsandbytes package and CUDA")
    cap.add_argument("--attention", choices=ATTENTIONS, default="sdpa",
                     help="sdpa (default); flash_attention_2 needs flash-attn and CUDA")
    cap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def captioner_models(args: argparse.Namespace, plan: MemoryPlan | None = None) -> PipelineModels:
    """The captioner, found where `rsvl upscale` finds it, as the only stage of a PipelineModels (loaded lazily);
    with a --max-vram plan, stored and placed as the plan says."""
    from ..jobs.inputs import locate_caption_files
    from ..kit.devices import resolve_device
    from ..pipeline import PipelineModels, StageSpec
    from ..pipeline.components import load_captioner

    folder, adapter = locate_caption_files(args.models_dir, args.llava, args.adapter, args.ckpt_pth, say,
                                           with_adapter=not args.no_adapter, comfyui_dir=args.comfyui_dir)
    device = resolve_device(args.device)
    cpu_precision(args, device.type, say)
    storage = plan.caption_storage if plan is not None else "none"

    def load(where):
        try:
            return load_captioner(folder, adapter, device=where, dtype=args.dtype, quantization=args.quantization,
                                  attention=args.attention, merge_adapter=args.merge_adapter, storage=storage)
        except ValueError as exc:
            raise RsvlError(str(exc)) from None

    spec = StageSpec("caption", load, [folder] + ([adapter] if adapter else []))
    models = PipelineModels(device, "resident" if plan is None else plan.placement_for(device), captioner=spec)
    if plan is not None:  # as `rsvl upscale`: loaded on the host, stored low-bit there, then moved
        models.memory_plan, models.load_on_host = plan.record(), True
    return models


def caption_plan(args: argparse.Namespace) -> MemoryPlan | None:
    """--max-vram: the captioner's plan for the largest input's overview (said on the start line); else None."""
    from ..jobs.inputs import collect_inputs
    from ..memory.plan import plan_for_captions
    from ..pipeline import RunConfig
    from ..scenes.sources import OVERVIEW_SIDE

    if not args.max_vram:
        return None
    config = RunConfig.from_values(stage1_only=True, **setting_values(args))
    plan = plan_for_captions(config, collect_inputs(args.inputs), OVERVIEW_SIDE)
    say(plan.describe())
    return plan


def run_caption(args: argparse.Namespace) -> CaptionSummary:
    """Caption every input; print `name: caption` lines or write them (atomically) to --output."""
    from ..jobs.inputs import SceneOptions
    from ..jobs.work import caption_job
    from ..pipeline import caption_options_from
    from .progress import CaptionBars

    try:
        options = caption_options_from(setting_values(args, **({"caption_temperature": 0} if args.greedy else {})))
        scene = SceneOptions(args.bands, args.stretch, args.percentiles)
    except ValueError as exc:
        raise RsvlError(str(exc)) from None
    models = captioner_models(args, caption_plan(args))
    events = CaptionBars(args.quiet)
    try:
        summary = caption_job(args.inputs, options, models, scene, events, args.output, args.overwrite)
    finally:
        events.close()
    if args.output is None:
        sys.stdout.write("".join(f"{source.name}: {caption}\n" for source, caption in summary.captions))
        return summary
    if not args.quiet:
        print(f"wrote {len(summary.captions)} caption(s) to {args.output}", file=sys.stderr)
    return summary
