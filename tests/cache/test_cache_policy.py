"""The step cache's decision rules on constructed signals (no network)."""

from __future__ import annotations

import pytest
import torch

from rsvl_core.cache import CachePolicy, StepCache, relative_difference


def _signal(value: float) -> torch.Tensor:
    return torch.full((2, 3, 4, 4), value)


def _run(policy: CachePolicy, values: list[float]) -> tuple[list[int], list[float]]:
    """Feed signals whose relative change is known; return reused steps and the threshold at each step."""
    cache = StepCache(policy, len(values))
    thresholds = []
    for step, value in enumerate(values):
        thresholds.append(cache.threshold)
        reused = cache.decide(step, _signal(value))
        if not reused:
            cache.store(denoised=torch.zeros(1))
        cache.after_step(reused)
    return cache.report.reused_steps, thresholds


def test_cache_relative_difference_is_relative_to_the_previous_signal():
    assert relative_difference(_signal(1.0), _signal(1.2)) == pytest.approx(0.2 / (1.0 + 1e-6))
    assert relative_difference(_signal(2.0), _signal(1.0)) == pytest.approx(0.5, rel=1e-5)


def test_cache_seed_rule_threshold_becomes_the_last_computed_diff():
    # diffs vs the last computed signal: step1 0.5 (>= 0.3: compute, threshold := 0.5),
    # step2 0.2 (< 0.5: reuse, threshold stays), step3 vs step1's signal (1.5): 1.65/1.5-1 = 0.1 -> reuse,
    # step4 2.4/1.5-1 = 0.6 -> compute (threshold := 0.6), step5 2.4*1.5 -> 0.5 < 0.6 -> reuse
    values = [1.0, 1.5, 1.8, 1.65, 2.4, 3.6]
    reused, thresholds = _run(CachePolicy.seed(threshold=0.3), values)
    assert reused == [2, 3, 5]
    assert thresholds == pytest.approx([0.3, 0.3, 0.5, 0.5, 0.5, 0.6], rel=1e-4)


def test_cache_seed_rule_is_strict_and_first_step_never_reuses():
    exact = relative_difference(_signal(1.0), _signal(1.5))
    reused, _ = _run(CachePolicy.seed(threshold=exact), [1.0, 1.5])  # diff == threshold: not reused
    assert reused == []
    reused, _ = _run(CachePolicy.seed(threshold=exact * 1.0001), [1.0, 1.5])
    assert reused == [1]
    reused, _ = _run(CachePolicy.seed(threshold=10.0), [1.0, 1.0, 1.0])
    assert reused == [1, 2]


def test_cache_decay_multiplies_the_threshold_every_step():
    _, thresholds = _run(CachePolicy(mode="fast", threshold=0.4, decay=0.5), [1.0, 1.0, 1.0, 1.0])
    assert thresholds == pytest.approx([0.4, 0.2, 0.1, 0.05])
    _, seed_thresholds = _run(CachePolicy.seed(threshold=0.3, decay=0.5), [1.0, 2.0, 2.1])
    # step 0 computed (no diff): 0.3 * 0.5; step 1 computed with diff 1.0: 1.0 * 0.5
    assert seed_thresholds == pytest.approx([0.3, 0.15, 0.5], rel=1e-4)


def test_cache_fixed_rule_keeps_its_threshold_and_guards_steps():
    flat = [1.0] * 8
    reused, thresholds = _run(CachePolicy(mode="fast", threshold=0.1), flat)
    assert reused == [1, 2, 3, 4, 5, 6, 7] and set(thresholds) == {0.1}
    reused, _ = _run(CachePolicy(mode="fast", threshold=0.1, skip_first=2, skip_last=2), flat)
    assert reused == [2, 3, 4, 5]
    reused, _ = _run(CachePolicy(mode="fast", threshold=0.1, max_consecutive=2), flat)
    assert reused == [1, 2, 4, 5, 7]  # every third step is computed


def test_cache_off_and_zero_threshold_never_reuse():
    assert _run(CachePolicy(), [1.0] * 4)[0] == []
    assert _run(CachePolicy(mode="seed", threshold=0.0), [1.0] * 4)[0] == []


def test_cache_report_and_policy_checks():
    cache = StepCache(CachePolicy(mode="fast", threshold=1.0), 3)
    for step in range(3):
        reused = cache.decide(step, _signal(1.0))
        if not reused:
            cache.store(denoised=torch.zeros(1))
        cache.after_step(reused)
    assert cache.report.computed_steps == [0] and cache.report.reused_steps == [1, 2]
    assert cache.report.summary() == "1/3 steps computed, 2 reused (1, 2)"
    with pytest.raises(ValueError, match="cache mode"):
        CachePolicy(mode="sometimes")
    with pytest.raises(ValueError, match="reuse"):
        CachePolicy(reuse="x0")
