"""The pipeline: run configuration (options.py), models on one device (models.py), one image through the
three stages (run.py), and the job API that turns input files into outputs and run records (jobs.py)."""

from .acceleration import Acceleration
from .jobs import (
    CaptionSummary,
    JobEvents,
    JobOptions,
    JobSummary,
    SceneOptions,
    caption_job,
    collect_inputs,
    locate_caption_files,
    locate_model_files,
    output_path,
)
from .memory_plan import MemoryBudgetError, MemoryPlan, plan_for_run
from .models import PLACEMENTS, ModelFiles, PipelineModels, StageSpec, module_bytes
from .options import (
    SETTINGS,
    RunConfig,
    Setting,
    StepSettings,
    caption_options_from,
    refine_options_from,
    schedule_from,
    stage1_options_from,
)
from .run import PipelineResult, run_pipeline
from .work import run_job

__all__ = [
    "CaptionSummary",
    "caption_job",
    "Acceleration",
    "PLACEMENTS",
    "SETTINGS",
    "JobEvents",
    "JobOptions",
    "JobSummary",
    "MemoryBudgetError",
    "MemoryPlan",
    "ModelFiles",
    "PipelineModels",
    "PipelineResult",
    "RunConfig",
    "SceneOptions",
    "Setting",
    "StageSpec",
    "StepSettings",
    "collect_inputs",
    "locate_caption_files",
    "locate_model_files",
    "module_bytes",
    "output_path",
    "plan_for_run",
    "caption_options_from",
    "refine_options_from",
    "schedule_from",
    "run_job",
    "run_pipeline",
    "stage1_options_from",
]
