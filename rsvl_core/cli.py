"""The `rsvl` command line: argparse in, engine calls out. Progress bars live here, not in the core."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import RsvlError
from .image import IMAGE_SUFFIXES, list_images, read_image, write_image_atomic
from .progress import ProgressCallback
from .stage1 import SAMPLERS, SCALES, SR3SamplerOptions, load_sr3, upscale_stage1
from .weights import MODELS_DIR_ENV, default_models_dir, locate_sr3

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsvl", description="Remote-sensing super-resolution: SR3 fidelity stage (+ refinement, later)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="super-resolve image files or folders")
    up.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image files or folders of images")
    up.add_argument("--input_img", "--input-img", action="append", type=Path, default=[],
                    help="an input image (seed-compatible alias; may repeat)")
    up.add_argument("--image_dir", "--image-dir", action="append", type=Path, default=[],
                    help="a folder of input images (seed-compatible alias; may repeat)")
    up.add_argument("-o", "--output", "--save_dir", dest="output", type=Path, required=True,
                    help="folder for the results (created if missing)")
    up.add_argument("--scale", "--upscale", dest="scale", type=int, choices=SCALES, default=8,
                    help="upscaling factor (default 8, the released model's)")
    add_model_options(up)
    up.add_argument("--stage1-only", action="store_true",
                    help="run stage 1 (SR3) only; today this is also what the default does, "
                         "since the refiner and captioner have not landed yet")
    up.add_argument("--sampler", choices=SAMPLERS, default="faithful",
                    help="faithful = the seed's 500-step ancestral DDPM (default); ddim / dpmpp are faster")
    up.add_argument("--steps", type=int, default=None,
                    help="faithful: schedule length (default 500); ddim/dpmpp: solver steps (default 50)")
    up.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    up.add_argument("--tile-size", type=int, default=224,
                    help="tile edge in output pixels; 0 = whole image at once (default 224)")
    up.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles in pixels (default 32)")
    up.add_argument("--tile-batch", type=int, default=4, help="tiles per model call (default 4)")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="prove the install: tiny random models, real file formats, real pipeline")
    demo.add_argument("--models-dir", type=Path, default=None,
                      help="write the tiny models here (laid out like real weights) and keep them")
    demo.add_argument("-o", "--output", type=Path, default=None, help="where to write the result")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"folder with the weights (default: ${MODELS_DIR_ENV}, else ./models)")
    parser.add_argument("--sr3", type=Path, default=None, help="the SR3 checkpoint file (overrides --models-dir)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model precision (default fp32)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RsvlError(f"--device {name}: CUDA is not available in this PyTorch build")
    return device


def collect_inputs(args: argparse.Namespace) -> list[Path]:
    """Files named directly, plus the images inside named folders, in order, without repeats."""
    paths: list[Path] = []
    for item in [*args.inputs, *args.input_img, *args.image_dir]:
        if item.is_dir():
            images = list_images(item)
            if not images:
                raise RsvlError(f"{item}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(images)
        elif item.exists():
            paths.append(item)
        else:
            raise RsvlError(f"{item}: input not found")
    if not paths:
        raise RsvlError("no input given: name image files or folders (or --input_img / --image_dir)")
    return list(dict.fromkeys(paths))


def output_path(output_dir: Path, source: Path, scale: int) -> Path:
    return output_dir / f"{source.stem}_x{scale}.png"


@dataclass
class RunSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def progress_bar_callback(bar) -> ProgressCallback:
    def callback(step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(step - bar.n)

    return callback


def run_upscale(args: argparse.Namespace) -> RunSummary:
    from tqdm import tqdm

    options = SR3SamplerOptions(
        sampler=args.sampler, steps=args.steps, tile_size=args.tile_size,
        tile_overlap=args.tile_overlap, tile_batch=args.tile_batch,
    )
    try:
        options.check()
    except ValueError as exc:
        raise RsvlError(str(exc)) from None
    inputs = collect_inputs(args)
    device = resolve_device(args.device)
    models_dir = args.models_dir if args.models_dir is not None else default_models_dir()
    sr3_path = locate_sr3(models_dir, args.sr3)
    model = load_sr3(sr3_path, device=device, dtype=DTYPES[args.dtype])
    if not args.stage1_only:
        tqdm.write("note: stage 2 (caption + refiner) is not in this version yet; running stage 1 (SR3) only",
                   file=sys.stderr)

    summary = RunSummary()
    claimed: dict[Path, Path] = {}
    for source in tqdm(inputs, desc="images", unit="img", disable=args.quiet or len(inputs) == 1):
        target = output_path(args.output, source, args.scale)
        if target in claimed:
            summary.failed.append((source, f"same output name as {claimed[target]} ({target.name})"))
            continue
        claimed[target] = source
        if target.exists() and not args.overwrite:
            summary.skipped.append(target)
            continue
        try:
            image, notes = read_image(source)
            for note in notes:
                tqdm.write(f"{source.name}: {note}", file=sys.stderr)
            start = time.perf_counter()
            with tqdm(desc=f"{source.name} stage 1", unit="step", leave=False, disable=args.quiet) as bar:
                result = upscale_stage1(model, image, args.scale, options, args.seed, progress_bar_callback(bar))
            write_image_atomic(result.cpu(), target)
            summary.written.append(target)
            if not args.quiet:
                tqdm.write(f"{source.name} -> {target} ({result.shape[-1]}x{result.shape[-2]}, "
                           f"{time.perf_counter() - start:.1f} s)", file=sys.stderr)
        except (RsvlError, ValueError) as exc:
            summary.failed.append((source, str(exc)))
            tqdm.write(f"error: {exc}", file=sys.stderr)
    return summary


def print_summary(summary: RunSummary) -> None:
    line = f"{len(summary.written)} written, {len(summary.skipped)} skipped (already exist; --overwrite replaces)"
    line += f", {len(summary.failed)} failed"
    print(line, file=sys.stderr)
    for source, reason in summary.failed:
        print(f"  failed: {source}: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "upscale":
            summary = run_upscale(args)
            print_summary(summary)
            return 1 if summary.failed else 0
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
    except RsvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no partial output was written", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
