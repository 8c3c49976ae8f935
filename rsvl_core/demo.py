"""`rsvl demo`: prove an install without downloads.

Writes tiny random-weight models in the real file formats, laid out as real weights are, and runs
the job API that `rsvl upscale` runs (stage 1, the captioner, then the SDXL/SUPIR refiner) on a bundled
real aerial image. Random
weights do not super-resolve: the output is noise-like by design. This only proves that loading,
sampling, tiling, captioning and writing work.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .caption.config import CaptionOptions
from .pipeline import (
    JobEvents,
    JobOptions,
    JobSummary,
    PipelineModels,
    RunConfig,
    locate_model_files,
    refine_options,
    run_job,
    stage1_options,
)
from .stage1 import SR3Config, SR3UNet, save_sr3
from .weights import WEIGHTS

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
    """Write tiny random models into `models_dir` in the layout `rsvl upscale --models-dir` reads (the weights table's
    sub-folders)."""
    folder = {item: Path(models_dir) / entry.subdir for item, entry in WEIGHTS.items()}
    torch.manual_seed(seed)
    unet = SR3UNet(DEMO_SR3_CONFIG)
    sr3_path = save_sr3(unet, folder["sr3"] / "rsvl_demo_sr3_gen.pth")
    # The captioner as real weights come: a Hugging Face LLaVA-NeXT folder + the seed-style LoRA folder.
    from .caption.tiny import write_tiny_llava_next, write_tiny_seed_adapter

    llava = write_tiny_llava_next(folder["captioner"], seed=seed)
    adapter = write_tiny_seed_adapter(folder["caption-adapter"], seed=seed + 1)
    # The refiner as the releases come: an SDXL single file and a SUPIR checkpoint, in the original layouts.
    from .refine.tiny import write_tiny_refiner_files

    sdxl, supir = write_tiny_refiner_files(folder["sdxl"], folder["supir"], seed)
    return {"sr3": sr3_path, "captioner": llava, "caption adapter": adapter, "SDXL": sdxl, "SUPIR": supir}


def demo_config() -> RunConfig:
    """The demo's run: the real pipeline at a CPU-friendly size (fast SR3 solver, short caption, 8 refiner
    steps at the stage-1 size)."""
    return RunConfig(scale=DEMO_SCALE, seed=0, stage1=stage1_options(sampler="dpmpp", steps=20),
                     caption=CaptionOptions(seed=0, max_new_tokens=24),
                     refine=refine_options("paper", steps=8, min_size=0))


def run_demo(models_dir: Path | None = None, output: Path | None = None, image: Path | None = None,
             events: JobEvents | None = None, say=print) -> tuple[JobSummary, Path | None]:
    """Write the tiny models, run the job API on the sample (or `image`) on the CPU; returns the summary and
    the run record of the result. Temporary folders stand in for `models_dir` / `output` when not given."""
    say(DEMO_NOTICE)
    with tempfile.TemporaryDirectory(prefix="rsvl-demo-") as scratch:
        models_dir = models_dir or Path(scratch) / "models"
        written = write_demo_models(models_dir)
        for stage, path in written.items():
            say(f"wrote tiny {stage} model: {path}")
        config = demo_config()
        files = locate_model_files(config, models_dir)
        models = PipelineModels.from_files(files, torch.device("cpu"), "fp32", "resident")
        options = JobOptions(output or Path(scratch) / "output", overwrite=True)
        summary = run_job([image or SAMPLE_IMAGE], config, models, options, events)
        record = None
        if summary.written and not summary.failed:
            record = json.loads(summary.written[0].with_suffix(".json").read_text(encoding="utf-8"))
        return summary, record
