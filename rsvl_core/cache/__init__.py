"""Step caching (dynamic acceleration): the policy and its per-run state (policy.py), and the one cached
evaluator both stages call once per sampler step (evaluator.py). Imports no stage."""

from .evaluator import CachedEvaluator
from .policy import PRESETS, CachePolicy, CacheReport, StepCache, StepDecision, relative_difference

__all__ = ["PRESETS", "CachePolicy", "CacheReport", "CachedEvaluator", "StepCache", "StepDecision",
           "relative_difference"]
