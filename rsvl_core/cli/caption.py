"""`rsvl caption IMAGE... --models-dir DIR`: describe images with the captioner (LLaVA-NeXT + LoRA).

The captioner is found where `rsvl upscale` finds it (the one weights lookup), and the images are read as
`rsvl upscale` reads them (`pipeline.caption_job`: GeoTIFF bands and stretch, large scenes as an overview).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path
from ..errors import RsvlError
from ..pipeline.options import ATTENTIONS, QUANTIZATIONS
from ..weights import MODELS_DIR_ENV
from .bars import say
from .commands import COMMANDS
from .settings import add_setting_flags, setting_flag, setting_values

if TYPE_CHECKING:  # the engine loads when the command runs, not to parse its flags
    from ..pipeline import CaptionSummary, PipelineModels


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
                     help="write `name: caption` lines to this file instead of printing them")
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
    cap.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                     help="8bit/4bit need the optional bitsandbytes package and CUDA")
    cap.add_argument("--attention", choices=ATTENTIONS, default="sdpa",
                     help="sdpa (default); flash_attention_2 needs flash-attn and CUDA")
    cap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def captioner_models(args: argparse.Namespace) -> PipelineModels:
    """The captioner, found where `rsvl upscale` finds it, as the only stage of a PipelineModels (loaded lazily)."""
    from ..devices import resolve_device
    from ..pipeline import PipelineModels, StageSpec, locate_caption_files
    from ..pipeline.components import load_captioner

    folder, adapter = locate_caption_files(args.models_dir, args.llava, args.adapter, args.ckpt_pth, say,
                                           with_adapter=not args.no_adapter, comfyui_dir=args.comfyui_dir)
    device = resolve_device(args.device)

    def load(where):
        try:
            return load_captioner(folder, adapter, device=where, dtype=args.dtype, quantization=args.quantization,
                                  attention=args.attention, merge_adapter=args.merge_adapter)
        except ValueError as exc:
            raise RsvlError(str(exc)) from None

    spec = StageSpec("caption", load, [folder] + ([adapter] if adapter else []))
    return PipelineModels(device, "resident", captioner=spec)


def run_caption(args: argparse.Namespace) -> CaptionSummary:
    """Caption every input; print `name: caption` lines or write them (atomically) to --output."""
    from ..pipeline import SceneOptions, caption_job, caption_options_from
    from .progress import CaptionBars

    try:
        options = caption_options_from(setting_values(args, **({"caption_temperature": 0} if args.greedy else {})))
        scene = SceneOptions(args.bands, args.stretch, args.percentiles)
    except ValueError as exc:
        raise RsvlError(str(exc)) from None
    events = CaptionBars(args.quiet)
    try:
        summary = caption_job(args.inputs, options, captioner_models(args), scene, events)
    finally:
        events.close()
    lines = "".join(f"{source.name}: {caption}\n" for source, caption in summary.captions)
    if args.output is None:
        sys.stdout.write(lines)
        return summary
    with atomic_path(args.output) as tmp:
        tmp.write_text(lines, encoding="utf-8")
    if not args.quiet:
        print(f"wrote {len(summary.captions)} caption(s) to {args.output}", file=sys.stderr)
    return summary
