"""Jobs: input files and folders + a run configuration + models -> output files and run records (inputs.py),
planned as work items and run by one loop, `run_job` (work.py); N samples of a scene (samples.py) and the
spread layer written beside an output (spread_layer.py)."""

from ..kit.lazy import lazy_exports

_HOMES = {
    "CaptionSummary": "work", "JobEvents": "inputs", "JobOptions": "inputs", "JobSummary": "inputs",
    "SceneOptions": "inputs", "caption_job": "work", "collect_inputs": "inputs", "locate_caption_files": "inputs",
    "locate_model_files": "inputs", "output_path": "inputs", "run_job": "work",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
