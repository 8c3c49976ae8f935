"""The pipeline: run configuration (options.py), models on one device (models.py), one image through the
three stages (run.py), and the job API that turns input files into outputs and run records (jobs.py).

The names load on first use (`rsvl_core.lazy`): a command line parser that needs only the options table
(`SETTINGS`) does not import the stages' libraries.
"""

from ..lazy import lazy_exports

_HOMES = {
    "Acceleration": "acceleration",
    "CaptionSummary": "work", "JobEvents": "jobs", "JobOptions": "jobs", "JobSummary": "jobs",
    "SceneOptions": "jobs", "caption_job": "work", "collect_inputs": "jobs", "locate_caption_files": "jobs",
    "locate_model_files": "jobs", "output_path": "jobs",
    "MemoryBudgetError": "memory_plan", "MemoryPlan": "memory_plan", "plan_for_captions": "memory_plan",
    "plan_for_configs": "memory_plan", "plan_for_run": "memory_plan",
    "load_problems": "components",
    "ModelFiles": "models", "PipelineModels": "models", "StageSpec": "models", "module_bytes": "models",
    "PLACEMENTS": "placement",
    "SETTINGS": "options", "RunConfig": "options", "Setting": "options", "StepSettings": "options",
    "caption_options_from": "options", "refine_options_from": "options", "schedule_from": "options",
    "stage1_options_from": "options",
    "PipelineResult": "run", "run_pipeline": "run",
    "run_job": "work",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
