"""`rsvl eval`: the paper's evaluation protocol (degradation, methods, metrics, maps, pictures, tables).

degrade.py (HR -> LR), metrics.py (PSNR/SSIM/consistency), hallucination.py (opensr-test correctness),
perceptual.py (LPIPS, DISTS, CLIP-IQA from local weights), maps.py (uncertainty and hallucination maps),
report.py (tables, chart, comparison sheets), runner.py (the run: resume, failures, provenance).
A face-level module: it uses the pipeline's job API and nothing below imports it.
"""

from ..kit.lazy import lazy_exports

_HOMES = {  # name -> the module it lives in
    "DegradeOptions": "degrade", "bicubic_downsample": "degrade", "crop_to_multiple": "degrade", "degrade": "degrade",
    "upsample_baseline": "degrade", "BASELINES": "degrade",
    "CORRECTNESS_METRICS": "hallucination", "Correctness": "hallucination", "correctness": "hallucination",
    "CONSISTENCY_METRICS": "metrics", "REFERENCE_METRICS": "metrics", "consistency_metrics": "metrics",
    "reference_metrics": "metrics",
    "PERCEPTUAL_METRICS": "perceptual", "PerceptualScorer": "perceptual", "PerceptualWeights": "perceptual",
    "find_perceptual_weights": "perceptual",
    "ALL_METRICS": "runner", "EvalEvents": "runner", "EvalImage": "runner", "EvalOptions": "runner", "EvalSummary":
    "runner", "collect_dataset": "runner", "run_evaluation": "runner",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
