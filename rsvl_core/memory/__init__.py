"""Memory: where weights live while a stage runs (placement.py, block_swap.py, lowbit.py), the peak each
stage will reach (estimate.py), the plan for a GPU budget (plan.py) and a windowed scene's host memory (windows.py)."""

from ..kit.lazy import lazy_exports

_HOMES = {
    "MemoryBudgetError": "plan", "MemoryPlan": "plan", "plan_for_captions": "plan", "plan_for_configs": "plan",
    "plan_for_run": "plan", "PLACEMENTS": "placement",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
