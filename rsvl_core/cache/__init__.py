"""Step caching (dynamic acceleration): the policy and its per-run state (policy.py), and the one cached
evaluator both stages call once per sampler step (evaluator.py). Imports no stage."""

from ..kit.lazy import lazy_exports

_HOMES = {  # name -> the module it lives in
    "CachedEvaluator": "evaluator",
    "PRESETS": "policy", "CachePolicy": "policy", "CacheReport": "policy", "StepCache": "policy", "StepDecision":
    "policy", "relative_difference": "policy",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
