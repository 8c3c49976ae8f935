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

from .jobs.inputs import JobEvents, JobOptions, JobSummary, locate_model_files
from .jobs.work import run_job
from .pipeline import PipelineModels, RunConfig
from .pipeline.tiny import write_tiny_models

SAMPLE_IMAGE = Path(__file__).parent / "samples" / "osbs_029_lr100.png"
DEMO_SCALE = 4
DEMO_NOTICE = (
    "rsvl demo: the models written here have RANDOM weights. They do not super-resolve; the output\n"
    "image is expected to look like noise. This only proves that the install works end to end\n"
    "(weights files -> loaders -> samplers -> tiled inference -> output files). For real results,\n"
    "put the real weights in a models folder (see README) and run `rsvl upscale`."
)


def write_demo_models(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the demo's tiny random models into `models_dir`, laid out as `rsvl upscale --models-dir` reads."""
    return write_tiny_models(models_dir, seed)


def demo_config() -> RunConfig:
    """The demo's run: the real pipeline at a CPU-friendly size (fast SR3 solver, short caption, 8 refiner
    steps at the stage-1 size)."""
    return RunConfig.from_values(scale=DEMO_SCALE, seed=0, stage1_sampler="dpmpp", stage1_steps=20,
                                 caption_max_tokens=24, refine_steps=8, min_size=0)


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
