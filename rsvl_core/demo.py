"""`rsvl demo`: prove an install without downloads.

Writes tiny random-weight models in the real file formats, laid out as real weights are, and runs
the real `rsvl upscale` path (stage 1, the captioner, then the SDXL/SUPIR refiner) on a bundled
real aerial image. Random
weights do not super-resolve: the output is noise-like by design. This only proves that loading,
sampling, tiling, captioning and writing work.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from .stage1 import SR3Config, SR3UNet, save_sr3
from .weights import ADAPTER_SUBDIR, CAPTIONER_SUBDIR, SDXL_SUBDIR, SR3_SUBDIR, SUPIR_SUBDIR

SAMPLE_IMAGE = Path(__file__).parent / "samples" / "osbs_029_lr100.png"
DEMO_SCALE = 4
# Small enough for a CPU, shaped like the real one: widths divisible by 32 (so no config file is
# needed, as with the released gen.pth) and attention at 1/8 resolution.
DEMO_SR3_CONFIG = SR3Config(
    inner_channel=32, channel_mults=(1, 1, 2, 2), attention_levels=(3,), res_blocks=1, norm_groups=32, dropout=0.0
)
DEMO_NOTICE = (
    "rsvl demo: the models written here have RANDOM weights. They do not super-resolve; the output\n"
    "image is expected to look like noise. This only proves that the install works end to end\n"
    "(weights files -> loaders -> samplers -> tiled inference -> output files). For real results,\n"
    "put the real weights in a models folder (see README) and run `rsvl upscale`."
)


def write_demo_models(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write tiny random models into `models_dir` in the layout `rsvl upscale --models-dir` reads."""
    torch.manual_seed(seed)
    unet = SR3UNet(DEMO_SR3_CONFIG)
    sr3_path = save_sr3(unet, Path(models_dir) / SR3_SUBDIR / "rsvl_demo_sr3_gen.pth")
    # The captioner as real weights come: a Hugging Face LLaVA-NeXT folder + the seed-style LoRA folder.
    from .caption.tiny import write_tiny_llava_next, write_tiny_seed_adapter

    llava = write_tiny_llava_next(Path(models_dir) / CAPTIONER_SUBDIR, seed=seed)
    adapter = write_tiny_seed_adapter(Path(models_dir) / ADAPTER_SUBDIR, seed=seed + 1)
    # The refiner as the releases come: an SDXL single file and a SUPIR checkpoint, in the original layouts.
    from .refine.tiny import write_tiny_refiner_files

    sdxl, supir = write_tiny_refiner_files(Path(models_dir) / SDXL_SUBDIR, Path(models_dir) / SUPIR_SUBDIR, seed)
    return {"sr3": sr3_path, "captioner": llava, "caption adapter": adapter, "SDXL": sdxl, "SUPIR": supir}


def run_demo(args: argparse.Namespace) -> int:
    from .cli import build_parser, print_summary, run_upscale

    print(DEMO_NOTICE, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="rsvl-demo-") as scratch:
        models_dir = args.models_dir or Path(scratch) / "models"
        output = args.output or Path(scratch) / "output"
        written = write_demo_models(models_dir)
        for stage, path in written.items():
            print(f"wrote tiny {stage} model: {path}", file=sys.stderr)
        argv = [
            "upscale", str(args.input or SAMPLE_IMAGE), "--output", str(output), "--scale", str(DEMO_SCALE),
            "--models-dir", str(models_dir), "--sampler", "dpmpp", "--steps", "20", "--caption-max-tokens", "24",
            # the refiner's real path at a CPU-friendly size: 8 steps, working size = the stage-1 size
            "--refine-steps", "8", "--refine-min-size", "0",
            "--overwrite", "--device", "cpu",
        ]
        if args.quiet:
            argv.append("--quiet")
        print("running: rsvl " + " ".join(argv), file=sys.stderr)
        summary = run_upscale(build_parser().parse_args(argv))
        print_summary(summary)
        if summary.failed or not summary.written:
            return 1
        sidecar = summary.written[0].with_suffix(".json")
        print(f"caption (random weights, so random words): {json.loads(sidecar.read_text())['caption']!r}",
              file=sys.stderr)
        if args.output is None:
            print("demo passed (the output was in a temporary folder; pass --output DIR to keep it)", file=sys.stderr)
        else:
            print(f"demo passed: {summary.written[0]}", file=sys.stderr)
        if args.models_dir is not None:
            print(f"tiny models kept in {models_dir}; try: rsvl upscale IMAGE --output DIR "
                  f"--models-dir {models_dir}", file=sys.stderr)
    return 0
