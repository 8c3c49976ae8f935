"""`rsvl eval`: flags -> methods (RunConfigs), the degradation, model files and perceptual weights ->
`evaluation.run_evaluation`; progress bars over images x methods and a closing summary."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..evaluation.degrade import BASELINES
from ..kit.errors import RsvlError
from ..pipeline import SETTINGS, RunConfig
from .bars import say
from .commands import COMMANDS
from .settings import config_from_args, cpu_precision, positive_int, setting_flag
from .upscale import (
    acceleration_from_args,
    add_memory_flag,
    add_model_options,
    add_refine_options,
    add_run_settings,
    add_scene_flags,
    scene_options_from_args,
)

if TYPE_CHECKING:  # the evaluation loads when the command runs, not to parse its flags
    from ..evaluation import EvalSummary
    from ..pipeline import PipelineModels

DEFAULT_METHODS = "bicubic,stage1,full"
PRESETS = SETTINGS["preset"].choices


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help=COMMANDS["eval"],
                        description="Degrade each HR image (PIL bicubic, antialiased, by --scale), run every method "
                                    "on the LR image, score it against HR; tables, maps and pictures in --output.")
    ev.add_argument("hr_dir", type=Path, metavar="HR_DIR", help="a folder of HR images, or of class folders of them")
    ev.add_argument("-o", "--output", type=Path, required=True, help="folder for tables, maps and pictures")
    setting_flag(ev, "scale")
    ev.add_argument("--methods", default=DEFAULT_METHODS,
                    help=f"comma-separated: {', '.join(BASELINES)}, stage1, full, or a refiner preset "
                         f"({', '.join(sorted(PRESETS))}) (default {DEFAULT_METHODS})")
    ev.add_argument("--samples", type=positive_int, default=1,
                    help="seeds per pipeline method (seed, seed+1, ...); 2 or more also write std maps and score "
                         "how well the spread predicts the error (Spearman rho, error in the most vs least uncertain "
                         "tenth) (default 1)")
    ev.add_argument("--degrade-blur", type=float, default=0.0, help="Gaussian blur sigma (HR pixels) before "
                    "downsampling (default 0: the paper's protocol)")
    ev.add_argument("--degrade-noise", type=float, default=0.0, help="Gaussian noise sigma added to the LR image, "
                    "in [0, 1] units (default 0)")
    ev.add_argument("--degrade-jpeg", type=int, default=0, help="JPEG quality 1..95 applied to the LR image "
                    "(default 0: none)")
    add_model_options(ev)
    add_memory_flag(ev)
    add_run_settings(ev)
    add_scene_flags(ev)
    add_refine_options(ev)
    perceptual = ev.add_argument_group("perceptual metrics (local weights only; skipped when absent)")
    perceptual.add_argument("--lpips-weights", type=Path, default=None,
                            help="torchvision's ImageNet AlexNet file (alexnet-owt-7be5be79.pth) for lpips")
    perceptual.add_argument("--dists-weights", type=Path, default=None,
                            help="torchvision's ImageNet VGG16 file (vgg16-397923af.pth) for dists")
    perceptual.add_argument("--clip-model", type=Path, default=None,
                            help="a Hugging Face CLIP model folder for clip_iqa (default <models-dir>/eval/clip)")
    ev.add_argument("--no-hash", action="store_true", help="leave the model files' sha256 out of summary.json")
    ev.add_argument("--overwrite", action="store_true", help="recompute finished image x method pairs")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(stage1_only=False)


def method_configs(args: argparse.Namespace) -> dict[str, RunConfig | None]:
    """--methods -> name -> RunConfig (None for the baselines); all share the seed and stage-1 settings."""
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    known = [*BASELINES, "stage1", "full", *sorted(PRESETS)]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"--methods {args.methods!r}: unknown {', '.join(unknown) or '(empty)'}; choose from "
                         f"{', '.join(known)}")
    full = config_from_args(args, samples=None)  # eval runs its --samples seeds itself, one pipeline run each
    configs: dict[str, RunConfig | None] = {}
    for name in dict.fromkeys(names):
        if name in BASELINES:
            configs[name] = None
        elif name == "stage1":
            configs[name] = replace(full, refine=None, caption_text=None, preset=None)
        elif name == "full":
            configs[name] = full
        else:
            configs[name] = config_from_args(args, preset=name, samples=None)
    return configs


def run_eval(args: argparse.Namespace) -> EvalSummary:
    from ..evaluation import DegradeOptions, EvalOptions, PerceptualScorer, find_perceptual_weights, run_evaluation
    from ..kit.devices import resolve_device
    from .progress import EvalBars

    cpu_precision(args, resolve_device(args.device).type, say)  # before the methods' configs record the dtype
    try:
        methods = method_configs(args)
        options = EvalOptions(args.output, args.scale, methods,
                              DegradeOptions(args.degrade_blur, args.degrade_noise, args.degrade_jpeg),
                              seed=args.seed, samples=args.samples, overwrite=args.overwrite,
                              command=shlex.join(["rsvl", *sys.argv[1:]]) if sys.argv[1:2] == ["eval"] else
                              "rsvl eval (library call)", hash_models=not args.no_hash,
                              scene=scene_options_from_args(args))
        options.check()
        acceleration = acceleration_from_args(args)
    except ValueError as exc:
        raise RsvlError(str(exc)) from None
    device = resolve_device(args.device)
    methods, models = eval_models(args, methods, device, acceleration)
    options = replace(options, methods=methods)
    weights = find_perceptual_weights(args.models_dir, args.lpips_weights, args.dists_weights, args.clip_model)
    events = EvalBars(args.quiet)
    try:
        return run_evaluation(args.hr_dir, options, models, PerceptualScorer(weights, args.models_dir, device), events)
    finally:
        events.close()


def eval_models(args: argparse.Namespace, methods: dict[str, RunConfig | None], device,
                acceleration) -> tuple[dict[str, RunConfig | None], PipelineModels | None]:
    """The pipeline methods' models (None for baselines only), found as `rsvl upscale` finds them, placed by the
    --max-vram plan that every method fits (planned on the largest HR image's LR input)."""
    from ..evaluation import collect_dataset
    from ..jobs.inputs import locate_model_files
    from ..memory.plan import largest_input_size, plan_for_configs
    from ..pipeline import PipelineModels

    pipeline = [c for c in methods.values() if c is not None]
    if not pipeline:
        return methods, None
    widest = next((c for c in pipeline if c.refine is not None), pipeline[0])  # find every file it needs
    files = locate_model_files(widest, args.models_dir, args.stage1_model, args.sdxl, args.supir, notify=say,
                               captioner=args.llava, adapter=args.adapter, ckpt_dir=args.ckpt_pth,
                               comfyui_dir=args.comfyui_dir)
    plan = None
    if widest.max_vram:
        hr = largest_input_size([image.path for image in collect_dataset(args.hr_dir)])
        lr = (max(1, hr[0] // args.scale), max(1, hr[1] // args.scale))
        window = args.window_size
        plan = plan_for_configs(pipeline, (min(lr[0], window or lr[0]), min(lr[1], window or lr[1])))
        say(plan.describe())
        methods = {name: None if c is None else plan.apply(c) for name, c in methods.items()}
    models = PipelineModels.from_files(files, device, args.dtype, args.placement, args.vae_dtype, acceleration, plan)
    return methods, models


def print_eval_summary(summary: EvalSummary, output: Path) -> int:
    """`N computed, N read back, N failed`, the failures, where the tables are; the exit code."""
    print(f"{len(summary.computed)} image x method pair(s) computed, {len(summary.skipped)} read back from an "
          f"earlier run (--overwrite recomputes), {len(summary.failed)} failed", file=sys.stderr)
    for what, message in summary.failed:
        print(f"  failed: {message if message.startswith(what) else f'{what}: {message}'}", file=sys.stderr)
    if "summary_md" in summary.files:
        print(f"tables: {summary.files['summary_md']} (also per_image.csv, summary_*.csv, summary.json in {output})",
              file=sys.stderr)
    return 1 if summary.failed else 0
