"""The `rsvl` command line: argparse in, engine calls out. Progress bars live here, not in the core."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import RsvlError
from .image import IMAGE_SUFFIXES, list_images, read_image
from .stage1 import SAMPLERS, SCALES, SR3SamplerOptions, load_sr3
from .weights import (
    MODELS_DIR_ENV,
    default_models_dir,
    locate_caption_adapter,
    locate_captioner,
    locate_sdxl,
    locate_sr3,
    locate_supir,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsvl",
        description="Remote-sensing super-resolution: SR3 fidelity stage, caption, SUPIR/SDXL refinement.",
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
                    help="run stage 1 (SR3) alone: no caption, no refiner")
    up.add_argument("--caption", default=None,
                    help="use this text as the caption instead of running the captioner")
    up.add_argument("--caption-max-tokens", type=int, default=None,
                    help="longest generated caption in tokens (default: the seed's 256)")
    up.add_argument("--sampler", choices=SAMPLERS, default="faithful",
                    help="faithful = the seed's 500-step ancestral DDPM (default); ddim / dpmpp are faster")
    up.add_argument("--steps", type=int, default=None,
                    help="faithful: schedule length (default 500); ddim/dpmpp: solver steps (default 50)")
    up.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    up.add_argument("--tile-size", type=int, default=224,
                    help="tile edge in output pixels; 0 = whole image at once (default 224)")
    up.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles in pixels (default 32)")
    up.add_argument("--tile-batch", type=int, default=4, help="tiles per model call (default 4)")
    up.add_argument("--placement", choices=("auto", "resident", "sequential"), default="auto",
                    help="one GPU: keep every model on it (resident), or each only while its stage runs "
                         "(sequential); auto decides from free memory (default)")
    up.add_argument("--window-size", type=int, default=0,
                    help="process large scenes in windows of this many input pixels (0 = whole image, default)")
    up.add_argument("--window-overlap", type=int, default=16, help="input pixels shared by windows (default 16)")
    up.add_argument("--bands", default=None,
                    help="GeoTIFF bands to use as R,G,B, 1-based (e.g. 3,2,1; default 1,2,3, or 1 for one band)")
    up.add_argument("--stretch", choices=("percentile", "none"), default=None,
                    help="GeoTIFF value scaling: percentile (default for non-8-bit data) or none (divide by the "
                         "type's maximum); recorded in the run record")
    up.add_argument("--percentiles", default=None, help="low,high percentiles of the stretch (default 2,98)")
    add_refine_options(up)
    up.add_argument("--no-hash", action="store_true",
                    help="leave the model files' sha256 out of the run record (computed once per file, then cached)")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    add_caption_parser(sub)
    from .weights_cli import add_weights_parser

    add_weights_parser(sub)

    demo = sub.add_parser("demo", help="prove the install: tiny random models, real file formats, real pipeline")
    demo.add_argument("--models-dir", type=Path, default=None,
                      help="write the tiny models here (laid out like real weights) and keep them")
    demo.add_argument("-o", "--output", type=Path, default=None, help="where to write the result")
    demo.add_argument("--input", type=Path, default=None,
                      help="the image to run on (default: the bundled 100x100 aerial sample)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def add_refine_options(parser: argparse.ArgumentParser) -> None:
    """Stage-2 options; defaults come from the chosen preset (`paper` = the seed's infer.py settings)."""
    from .refine.refiner import COLOR_FIXES, PRESETS

    group = parser.add_argument_group("refiner (stage 2)")
    group.add_argument("--sdxl", type=Path, default=None,
                       help="the SDXL base single file or diffusers folder (overrides <models-dir>/sdxl)")
    group.add_argument("--supir", type=Path, default=None,
                       help="the SUPIR checkpoint (overrides <models-dir>/supir)")
    group.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                       help="refiner settings preset (default paper: the seed's 50 steps, CFG 4->7.5, churn 5)")
    group.add_argument("--refine-steps", type=int, default=None, help="refiner sampling steps (preset: 50)")
    group.add_argument("--cfg-scale", type=float, default=None, help="CFG scale at the end (preset: 7.5)")
    group.add_argument("--cfg-scale-start", type=float, default=None,
                       help="CFG scale at the start, linear in sigma (preset: 4.0)")
    group.add_argument("--control-scale", type=float, default=None,
                       help="strength of the stage-1 control, 0..2 (preset: 1.0)")
    group.add_argument("--restoration-scale", type=float, default=None,
                       help="pull toward the stage-1 latent; <= 0 is off (preset: off, as the seed)")
    group.add_argument("--s-churn", type=float, default=None, help="EDM churn (preset: 5)")
    group.add_argument("--color-fix", choices=COLOR_FIXES, default=None,
                       help="colour correction against the stage-1 image (preset: wavelet)")
    group.add_argument("--refine-min-size", type=int, default=None,
                       help="the refiner works with the short side at least this many pixels (preset: 1024)")
    group.add_argument("--latent-tile-size", type=int, default=None,
                       help="refiner tile edge in latent pixels (x8 = image pixels); 0 = no tiling (preset: 128)")
    group.add_argument("--cache", choices=("off", "seed", "fast"), default="off",
                       help="refiner step cache: seed = the seed's (adaptive threshold 0.3), fast = ours "
                            "(first-block signal, guarded reuse); default off")
    group.add_argument("--cache-threshold", type=float, default=None,
                       help="the cache's relative-difference threshold (seed: 0.3, fast: 0.2)")
    group.add_argument("--vae-dtype", choices=sorted(DTYPES), default=None,
                       help="VAE precision (default: --dtype; fp16 runs in fp32 since SDXL's VAE overflows)")


def refine_options_from_args(args: argparse.Namespace):
    """The preset with the command line's overrides applied (checked)."""
    from dataclasses import replace

    from .refine.refiner import preset

    sampler = {name: value for name, value in (
        ("steps", args.refine_steps), ("cfg_scale", args.cfg_scale), ("cfg_scale_start", args.cfg_scale_start),
        ("control_scale", args.control_scale), ("restoration_scale", args.restoration_scale),
        ("s_churn", args.s_churn)) if value is not None}
    options = preset(args.preset, **sampler)
    top = {name: value for name, value in (
        ("color_fix", args.color_fix), ("min_size", args.refine_min_size),
        ("latent_tile_size", args.latent_tile_size)) if value is not None}
    options = replace(options, **top)
    from .cache.scheduler import DynamicStepScheduler

    schedule = DynamicStepScheduler.preset(args.cache, refine_steps=options.sampler.steps)
    if args.cache_threshold is not None:
        schedule = replace(schedule, refine_cache=replace(schedule.refine_cache, threshold=args.cache_threshold))
    options = schedule.refine_options(options)
    check_options(options)
    return options


def add_caption_parser(sub: argparse._SubParsersAction) -> None:
    """`rsvl caption IMAGE... --models-dir DIR`: describe images with the captioner (LLaVA-NeXT + LoRA)."""
    from .caption.config import ATTENTIONS, QUANTIZATIONS, CaptionOptions

    defaults = CaptionOptions()
    cap = sub.add_parser("caption", help="describe images with the vision-language captioner (LLaVA-NeXT)")
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


def run_caption(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """Caption every input; print `name: caption` lines or write them (atomically) to --output."""
    from tqdm import tqdm

    from .atomic import atomic_path
    from .caption import CaptionOptions, load_captioner

    options = CaptionOptions(prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             do_sample=not args.greedy, seed=args.seed)
    check_options(options)
    inputs = collect_inputs(argparse.Namespace(inputs=args.inputs, input_img=[], image_dir=[]))
    device = resolve_device(args.device)
    models_dir = args.models_dir if args.models_dir is not None else default_models_dir()
    folder = locate_captioner(models_dir, args.llava)
    adapter = None if args.no_adapter else locate_caption_adapter(models_dir, args.adapter)
    try:
        captioner = load_captioner(folder, adapter, device=device, dtype=args.dtype, quantization=args.quantization,
                                   attention=args.attention, merge_adapter=args.merge_adapter)
    except ValueError as exc:
        raise RsvlError(str(exc)) from None
    results: list[tuple[Path, str]] = []
    for source in inputs:
        image, notes = read_image(source)
        for note in notes:
            tqdm.write(f"{source.name}: {note}", file=sys.stderr)
        results.append((source, caption_with_progress(captioner, image, options, source.name, args.quiet)))
    lines = "".join(f"{source.name}: {caption}\n" for source, caption in results)
    if args.output is None:
        sys.stdout.write(lines)
    else:
        with atomic_path(args.output) as tmp:
            tmp.write_text(lines, encoding="utf-8")
        if not args.quiet:
            print(f"wrote {len(results)} caption(s) to {args.output}", file=sys.stderr)
    return results


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"folder with the weights (default: ${MODELS_DIR_ENV}, else ./models)")
    parser.add_argument("--sr3", type=Path, default=None, help="the SR3 checkpoint file (overrides --models-dir)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model precision (default fp32)")


def check_options(options) -> None:
    """Run an options object's `check()`, turning its ValueError into a one-line CLI error."""
    try:
        options.check()
    except ValueError as exc:
        raise RsvlError(str(exc)) from None


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


def output_path(output_dir: Path, source: Path, scale: int, suffix: str = ".png") -> Path:
    return output_dir / f"{source.stem}_x{scale}{suffix}"


@dataclass
class RunSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def locate_with_fallback(stage: str, locate, models_dir: Path, explicit: Path | None = None):
    """The models folder first (its error text when missing everywhere), then the wider search order
    of `rsvl weights list`: $COMFYUI_DIR's model folders and the seed's CKPT_PTH layout."""
    from tqdm import tqdm

    from .errors import WeightsNotFoundError
    from .weights import find_weights

    try:
        return locate(models_dir, explicit)
    except WeightsNotFoundError:
        if explicit is not None:
            raise
        found = find_weights(stage, models_dir=models_dir)
        if not found.found:
            raise
        tqdm.write(f"{stage}: using {found.path} ({found.label})", file=sys.stderr)
        return found.path


def build_pipeline_models(args: argparse.Namespace, models_dir: Path, device: torch.device):
    """Locate every file the run needs (before any heavy work) and describe how to load each stage."""
    from .pipeline import PipelineModels, StageSpec

    dtype = DTYPES[args.dtype]
    sr3_path = locate_with_fallback("sr3", locate_sr3, models_dir, args.sr3)
    sr3 = StageSpec("stage1", lambda dev: load_sr3(sr3_path, device=dev, dtype=dtype), [sr3_path])
    captioner = refiner = None
    if not args.stage1_only:
        if args.caption is None:
            try:
                folder = locate_with_fallback("captioner", locate_captioner, models_dir)
                adapter = locate_caption_adapter(models_dir)
            except RsvlError as exc:
                raise RsvlError(f"{exc} (or pass --caption TEXT, or --stage1-only to skip captioning)") from None

            def load_captioner_on(dev: torch.device):
                from .caption import load_captioner

                return load_captioner(folder, adapter, device=dev, dtype=args.dtype)

            captioner = StageSpec("caption", load_captioner_on, [folder] + ([adapter] if adapter else []))
        sdxl_path = locate_with_fallback("sdxl", locate_sdxl, models_dir, args.sdxl)
        supir_path = locate_with_fallback("supir", locate_supir, models_dir, args.supir)
        vae_dtype = DTYPES[args.vae_dtype] if args.vae_dtype else None

        def load_refiner_on(dev: torch.device):
            from .refine.refiner import load_refiner

            return load_refiner(sdxl_path, supir_path, dtype=dtype, vae_dtype=vae_dtype, device=dev)

        refiner = StageSpec("refine", load_refiner_on, [sdxl_path, supir_path])
    return PipelineModels(device, args.placement, sr3, captioner, refiner)


def pipeline_options_from_args(args: argparse.Namespace):
    from .caption import CaptionOptions
    from .pipeline import PipelineOptions

    stage1 = SR3SamplerOptions(sampler=args.sampler, steps=args.steps, tile_size=args.tile_size,
                               tile_overlap=args.tile_overlap, tile_batch=args.tile_batch)
    check_options(stage1)
    refine = None if args.stage1_only else refine_options_from_args(args)
    caption = None
    if not args.stage1_only and args.caption is None:
        overrides = {} if args.caption_max_tokens is None else {"max_new_tokens": args.caption_max_tokens}
        caption = CaptionOptions(seed=args.seed, **overrides)
        check_options(caption)
    return PipelineOptions(scale=args.scale, stage1=stage1, caption=caption, caption_text=args.caption,
                           refine=refine, refine_enabled=not args.stage1_only, seed=args.seed)


class StageBars:
    """One progress bar per stage of one image (stage 1, caption, refine, VAE, windows)."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet, self.bar, self.stage = name, quiet, None, None

    def __call__(self, step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            unit = "tok" if stage == "caption" else "tile" if stage.startswith("vae") else "step"
            self.bar = tqdm(desc=f"{self.name} {stage}", total=total, unit=unit, leave=False, disable=self.quiet)
            self.stage = stage
        if self.bar.total != total:
            self.bar.reset(total=total)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


def caption_with_progress(captioner, image: torch.Tensor, options, name: str, quiet: bool) -> str:
    """One image's caption with a token progress bar, whitespace collapsed to single spaces."""
    bars = StageBars(name, quiet)
    try:
        caption = captioner.caption(image, options, bars)[0]
    finally:
        bars.close()
    from .caption import one_line

    return one_line(caption)


def run_upscale(args: argparse.Namespace) -> RunSummary:
    from tqdm import tqdm

    from .scene import WindowOptions
    from .scene_io import open_scene

    options = pipeline_options_from_args(args)
    windows = WindowOptions(args.window_size, args.window_overlap)
    check_options(windows)
    inputs = collect_inputs(args)
    device = resolve_device(args.device)
    models_dir = args.models_dir if args.models_dir is not None else default_models_dir()
    models = build_pipeline_models(args, models_dir, device)  # locates weights before any heavy work

    summary = RunSummary()
    claimed: dict[Path, Path] = {}
    model_files = None  # path, size and sha256 of every weights file, computed once for the run
    for source in tqdm(inputs, desc="images", unit="img", disable=args.quiet or len(inputs) == 1):
        geotiff = _is_geotiff(source, args)
        target = output_path(args.output, source, args.scale, ".tif" if geotiff else ".png")
        if target in claimed:
            summary.failed.append((source, f"same output name as {claimed[target]} ({target.name})"))
            continue
        claimed[target] = source
        if target.exists() and not args.overwrite:
            summary.skipped.append(target)
            continue
        if model_files is None:
            models.preload()  # once, before the first image: a wrong weights file stops the run here
            model_files = model_files_record(models, not args.no_hash)
        bars = StageBars(source.name, args.quiet)
        try:
            scene = open_scene(source, args.bands, args.stretch, args.percentiles, windowed=bool(windows.size),
                               geotiff=geotiff)
            for note in scene.notes:
                tqdm.write(f"{source.name}: {note}", file=sys.stderr)
            start = time.perf_counter()
            record = upscale_one(scene, options, models, windows, bars, target)
            record["input"] = {"file": source.name, "size": [scene.width, scene.height], "notes": scene.notes,
                               **scene.record}
            write_run_record(target, record, args, options, models, model_files)
            summary.written.append(target)
            if not args.quiet:
                cache = record.get("refine", {}).get("cache")
                if cache and cache["mode"] != "off":
                    tqdm.write(f"{source.name}: refiner cache ({cache['mode']}): {cache['summary']}", file=sys.stderr)
                height, width = scene.height * args.scale, scene.width * args.scale
                stages = ", ".join(f"{k} {v:.1f} s" for k, v in record["seconds"].items())
                peak = record["peak_memory_bytes"] / 2**30
                tqdm.write(f"{source.name} -> {target} ({width}x{height}, {time.perf_counter() - start:.1f} s: "
                           f"{stages}; peak {peak:.2f} GiB {record['peak_memory_kind']})", file=sys.stderr)
        except (RsvlError, ValueError) as exc:
            summary.failed.append((source, str(exc)))
            tqdm.write(f"error: {exc}", file=sys.stderr)
        finally:
            bars.close()
    return summary


def _is_geotiff(source: Path, args: argparse.Namespace) -> bool:
    """GeoTIFF inputs give GeoTIFF outputs (georeferencing kept); everything else gives PNG."""
    from .scene_io import is_geotiff_input

    try:
        return is_geotiff_input(source, args.bands, args.stretch)
    except OSError:
        return False  # unreadable: open_scene reports it


def upscale_one(scene, options, models, windows, callback, target: Path) -> dict:
    """The pipeline on one scene (whole, or window by window), written atomically to `target`."""
    from dataclasses import replace

    from .pipeline import run_pipeline
    from .scene import super_resolve_scene
    from .scene_io import row_sink, write_whole

    if not windows.size or (scene.height <= windows.size and scene.width <= windows.size):
        result = run_pipeline(scene.whole(), options, models, callback)
        write_whole(scene, result.image, target, options.scale)
        return run_record(result)
    results = []

    def process(window: torch.Tensor, index: int) -> torch.Tensor:
        results.append(run_pipeline(window, replace(options, seed=options.seed + index), models, callback))
        return results[-1].image

    with row_sink(scene, target, options.scale) as sink:
        count = super_resolve_scene(scene.height, scene.width, options.scale, windows, scene.read, process, sink)
    record = run_record(results[0])
    record["windows"] = {"count": count, "size": windows.size, "overlap": windows.overlap,
                         "captions": [r.caption for r in results],
                         "seconds": {k: round(sum(r.seconds.get(k, 0) for r in results), 3)
                                     for k in results[0].seconds}}
    record["peak_memory_bytes"] = max(r.peak_memory_bytes for r in results)
    return record


def run_record(result) -> dict:
    """What one pipeline run did, for the sidecar."""
    record = {"caption": result.caption, "caption_source": result.caption_source,
              "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
              "peak_memory_bytes": result.peak_memory_bytes, "peak_memory_kind": result.peak_memory_kind,
              "placement": result.placement}
    if result.stage1_cache is not None:
        record["stage1_cache"] = {"computed_steps": result.stage1_cache.computed_steps,
                                  "reused_steps": result.stage1_cache.reused_steps}
    report = result.refine_report
    if report is not None:
        record["refine"] = {"working_size": list(report.working_size), "latent_tiles": report.latent_tiles,
                            "unet_calls": report.unet_calls, "control_calls": report.control_calls,
                            "cache": {"computed_steps": report.cache.computed_steps,
                                      "reused_steps": report.cache.reused_steps,
                                      "summary": report.cache.summary()}}
    return record


def _jsonable(value):
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "extras"}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value == float("inf"):
        return None
    return value


def write_run_record(target: Path, record: dict, args: argparse.Namespace, options, models,
                     model_files: dict) -> Path:
    """`<output>.json` beside the image: caption, settings, seed, model files, per-stage times, cache use."""
    import json

    from .atomic import atomic_path

    sidecar = target.with_suffix(".json")
    settings = {"scale": options.scale, "seed": options.seed, "stage1": _jsonable(options.stage1),
                "caption": _jsonable(options.caption), "refine": _jsonable(options.refine),
                "preset": None if args.stage1_only else args.preset, "dtype": args.dtype,
                "device": str(models.device)}
    if "refine" in record:
        record["refine"]["cache"]["mode"] = options.refine.cache.mode
    full = {"image": target.name, "seed": options.seed, "scale": options.scale, **record, "settings": settings,
            "models": model_files}
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return sidecar


def model_files_record(models, with_hashes: bool = True) -> dict:
    """Each stage's files: path, size and sha256 (computed once per file and cached; folders get no hash)."""
    from .weights_manager import cached_sha256

    out = {}
    for stage, files in models.files().items():
        rows = []
        for f in files:
            row = {"path": str(f), "bytes": f.stat().st_size if f.is_file() else None}
            if with_hashes and f.is_file():
                row["sha256"] = cached_sha256(f)
            rows.append(row)
        out[stage] = rows
    return out


def print_summary(summary: RunSummary) -> None:
    line = f"{len(summary.written)} written, {len(summary.skipped)} skipped (already exist; --overwrite replaces)"
    line += f", {len(summary.failed)} failed"
    print(line, file=sys.stderr)
    for source, reason in summary.failed:
        shown = reason if reason.startswith(str(source)) else f"{source}: {reason}"
        print(f"  failed: {shown}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "upscale":
            summary = run_upscale(args)
            print_summary(summary)
            return 1 if summary.failed else 0
        if args.command == "caption":
            run_caption(args)
            return 0
        if args.command == "weights":
            from .weights_cli import run_weights

            return run_weights(args)
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
