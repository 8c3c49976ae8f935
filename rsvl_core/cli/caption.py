"""`rsvl caption IMAGE... --models-dir DIR`: describe images with the captioner (LLaVA-NeXT + LoRA)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..caption.config import ATTENTIONS, QUANTIZATIONS, CaptionOptions
from ..devices import DTYPES, resolve_device
from ..errors import RsvlError
from ..image import read_image
from ..pipeline import collect_inputs, locate_caption_files
from ..weights import MODELS_DIR_ENV
from .commands import COMMANDS
from .progress import StageBars, say


def add_caption_parser(sub: argparse._SubParsersAction) -> None:
    defaults = CaptionOptions()
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
    cap.add_argument("--no-adapter", action="store_true", help="caption with the base model only")
    cap.add_argument("--merge-adapter", action="store_true", help="merge the LoRA into the weights (faster)")
    cap.add_argument("-o", "--output", type=Path, default=None,
                     help="write `name: caption` lines to this file instead of printing them")
    cap.add_argument("--prompt", default=defaults.prompt, help="the instruction (default: the seed's analyst prompt)")
    cap.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                     help=f"longest caption in tokens (default {defaults.max_new_tokens})")
    cap.add_argument("--temperature", type=float, default=defaults.temperature,
                     help=f"sampling temperature (default {defaults.temperature})")
    cap.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    cap.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})")
    cap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    cap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                     help="model precision (default fp32; bf16/fp16 on a GPU)")
    cap.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                     help="8bit/4bit need the optional bitsandbytes package and CUDA")
    cap.add_argument("--attention", choices=ATTENTIONS, default="sdpa",
                     help="sdpa (default); flash_attention_2 needs flash-attn and CUDA")
    cap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def load_captioner_from_args(args: argparse.Namespace):
    from ..caption import load_captioner

    folder, adapter = locate_caption_files(args.models_dir, args.llava, args.adapter, args.ckpt_pth, say,
                                           with_adapter=not args.no_adapter)
    try:
        return load_captioner(folder, adapter, device=resolve_device(args.device), dtype=args.dtype,
                              quantization=args.quantization, attention=args.attention,
                              merge_adapter=args.merge_adapter)
    except ValueError as exc:
        raise RsvlError(str(exc)) from None


def caption_with_progress(captioner, image: torch.Tensor, options: CaptionOptions, name: str, quiet: bool) -> str:
    """One image's caption with a token progress bar, whitespace collapsed to single spaces."""
    from ..caption import one_line

    bars = StageBars(name, quiet)
    try:
        return one_line(captioner.caption(image, options, bars)[0])
    finally:
        bars.close()


def run_caption(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """Caption every input; print `name: caption` lines or write them (atomically) to --output."""
    try:
        options = CaptionOptions(prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, do_sample=not args.greedy, seed=args.seed)
        options.check()
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
