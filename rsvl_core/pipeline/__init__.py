"""The pipeline: run configuration (options.py), one call per stage over a batch (stage_runs.py), one image
through the three stages (run.py), models on one device (models.py) and the stage calls a face may make
(components.py).

The names load on first use (`rsvl_core.kit.lazy`): a command line parser that needs only the options table
(`SETTINGS`) does not import the stages' libraries.
"""

from ..kit.lazy import lazy_exports

_HOMES = {
    "Acceleration": "acceleration",
    "load_problems": "components",
    "ModelFiles": "models", "PipelineModels": "models", "StageSpec": "models", "module_bytes": "models",
    "SETTINGS": "options", "RunConfig": "options", "Setting": "options", "StepSettings": "options",
    "caption_options_from": "options", "refine_options_from": "options", "schedule_from": "options",
    "stage1_options_from": "options",
    "PipelineResult": "run", "run_pipeline": "run",
    "BatchRun": "stage_runs", "run_caption": "stage_runs", "run_refine": "stage_runs", "run_stage1": "stage_runs",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
