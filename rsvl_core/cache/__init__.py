"""Step caching (dynamic acceleration): the first-block cache policy, its per-run state and report."""

from .first_block import CachePolicy, CacheReport, StepCache, StepDecision, relative_difference

__all__ = ["CachePolicy", "CacheReport", "StepCache", "StepDecision", "relative_difference"]
