"""`rsvl eval`: the paper's evaluation protocol (degradation, methods, metrics, maps, pictures, tables).

degrade.py (HR -> LR), metrics.py (PSNR/SSIM/consistency), hallucination.py (opensr-test correctness),
perceptual.py (LPIPS, DISTS, CLIP-IQA from local weights), maps.py (uncertainty and hallucination maps),
report.py (tables, chart, comparison sheets), runner.py (the run: resume, failures, provenance).
A face-level module: it uses the pipeline's job API and nothing below imports it.
"""

from .degrade import DegradeOptions, bicubic_downsample, crop_to_multiple, degrade, upsample_baseline
from .hallucination import CORRECTNESS_METRICS, Correctness, correctness
from .metrics import CONSISTENCY_METRICS, REFERENCE_METRICS, consistency_metrics, reference_metrics
from .perceptual import PERCEPTUAL_METRICS, PerceptualScorer, PerceptualWeights, find_perceptual_weights
from .runner import (
    ALL_METRICS,
    BASELINES,
    EvalEvents,
    EvalImage,
    EvalOptions,
    EvalSummary,
    collect_dataset,
    run_evaluation,
)

__all__ = [
    "ALL_METRICS",
    "BASELINES",
    "CONSISTENCY_METRICS",
    "CORRECTNESS_METRICS",
    "PERCEPTUAL_METRICS",
    "REFERENCE_METRICS",
    "Correctness",
    "DegradeOptions",
    "EvalEvents",
    "EvalImage",
    "EvalOptions",
    "EvalSummary",
    "PerceptualScorer",
    "PerceptualWeights",
    "bicubic_downsample",
    "collect_dataset",
    "consistency_metrics",
    "correctness",
    "crop_to_multiple",
    "degrade",
    "find_perceptual_weights",
    "reference_metrics",
    "run_evaluation",
    "upsample_baseline",
]
