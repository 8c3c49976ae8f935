"""`rsvl caption IMAGE... --models-dir DIR`: describe images with the captioner (LLaVA-NeXT + LoRA)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..devices import resolve_device
from ..errors import RsvlError
from ..image import read_image
from ..pipeline import caption_options_from, collect_inputs
from ..pipeline.components import ATTENTIONS, QUANTIZATIONS, CaptionOptions, collapse_whitespace, load_captioner
from ..weights import MODELS_DIR_ENV, default_models_dir, locate_caption_adapter, locate_captioner
from .commands import COMMANDS
from .progress import StageBars, say
from .settings import add_setting_flags, setting_flag, setting_values


def add_caption_parser(sub: argparse._SubParsersAction) -> None:
    cap = sub.add_parser("caption", help=COMMANDS["caption"])
    cap.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    cap.add_argument("--models-dir", type=Path, default=None,
                     help=f"folder with llava/ (and optionally llava_adapter/) (default: ${MODELS_DIR_ENV}, "
                          f"else ./models)")
    cap.add_argument("--llava", type=Path, default=None, help="the model folder (overrides <models-dir>/llava)")
    cap.add_argument("--adapter", type=Path, default=None,
                     help="the LoRA adapter folder (overrides <models-dir>/llava_adapter)")
    cap.add_argument("--no-adapter", action="store_true", help="caption with the base model only")
    cap.add_argument("--merge-adapter", action="store_true", help="merge the LoRA into the weights (faster)")
    cap.add_argument("-o", "--output", type=Path, default=None,
                     help="write `name: caption` lines to this file instead of printing them")
    add_setting_flags(cap, ("caption_prompt", "caption_temperature", "caption_max_tokens", "seed"),
                      aliases={"caption_prompt": ("--prompt",), "caption_max_tokens": ("--max-new-tokens",),
                               "caption_temperature": ("--temperature",)})
    cap.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling (temperature 0)")
    cap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    setting_flag(cap, "dtype")
    cap.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                     help="8bit/4bit need the optional bitsandbytes package and CUDA")
    cap.add_argument("--attention", choices=ATTENTIONS, default="sdpa",
                     help="sdpa (default); flash_attention_2 needs flash-attn and CUDA")
    cap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def load_captioner_from_args(args: argparse.Namespace):
    models_dir = args.models_dir if args.models_dir is not None else default_models_dir()
    folder = locate_captioner(models_dir, args.llava)
    adapter = None if args.no_adapter else locate_caption_adapter(models_dir, args.adapter)
    try:
        return load_captioner(folder, adapter, device=resolve_device(args.device), dtype=args.dtype,
                              quantization=args.quantization, attention=args.attention,
                              merge_adapter=args.merge_adapter)
    except ValueError as exc:
        raise RsvlError(str(exc)) from None


def caption_with_progress(captioner, image: torch.Tensor, options: CaptionOptions, name: str, quiet: bool) -> str:
    """One image's caption with a token progress bar, whitespace collapsed to single spaces."""
    bars = StageBars(name, quiet)
    try:
        return collapse_whitespace(captioner.caption(image, options, bars)[0])
    finally:
        bars.close()


def run_caption(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """Caption every input; print `name: caption` lines or write them (atomically) to --output."""
    try:
        options = caption_options_from(setting_values(args, **({"caption_temperature": 0} if args.greedy else {})))
    except ValueError as exc:
        raise RsvlError(str(exc)) from None
    inputs = collect_inputs(args.inputs)
    captioner = load_captioner_from_args(args)
    results: list[tuple[Path, str]] = []
    for source in inputs:
        image, notes = read_image(source)
        for note in notes:
            say(f"{source.name}: {note}")
        results.append((source, caption_with_progress(captioner, image, options, source.name, args.quiet)))
    lines = "".join(f"{source.name}: {caption}\n" for source, caption in results)
    if args.output is None:
        sys.stdout.write(lines)
        return results
    with atomic_path(args.output) as tmp:
        tmp.write_text(lines, encoding="utf-8")
    if not args.quiet:
        print(f"wrote {len(results)} caption(s) to {args.output}", file=sys.stderr)
    return results
