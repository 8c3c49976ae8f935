"""Step-cache policy: when a denoising step may reuse the last computed result instead of running the network.

At each step the sampler runs the start of the network's encoder to a depth (the *signal*: depth 1 =
the first block, 0 = the whole encoder), compares it with the signal of the last fully computed step
(relative mean absolute difference), and either reuses that step's result or finishes the network
(`evaluator.CachedEvaluator` does that part). Two decision rules:

- `seed`: the seed's rule (models/modules/DFBCache.py + SR_model.just_sampling): reuse iff
  diff < threshold (strict); after every computed step the threshold becomes the diff just measured
  (times `decay`); the first step's threshold is the user's. The reused result is the previous
  step's guided denoised output D, as is.
- `fast` (ours): reuse iff diff < threshold with a fixed threshold (times `decay` per step), never
  within the first / last steps, at most `max_consecutive` reuses in a row; the reused result is the
  previous guided epsilon, re-applied at the current x and sigma (D = x - sigma_q * eps).

The policy is data (frozen); `StepCache` holds one run's state and its decision log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MODES = ("off", "seed", "fast")
REUSE = ("denoised", "eps")


@dataclass(frozen=True)
class CachePolicy:
    """How (and whether) steps may be reused.

    Args:
        mode: "off", "seed" (the seed's adaptive rule) or "fast" (ours: fixed threshold, guarded).
        threshold: relative-difference threshold (the seed's img_threshold; 0.3 in its infer.py).
        decay: multiplies the threshold after every step (the seed's dec_img; 1 = none).
        signal_depth: how many encoder outputs form the signal: 1 = conv_in + the first ResBlock, ...,
            0 = the whole encoder (the seed's "input_stage1" h).
        reuse: "denoised" (the seed: the previous D as is) or "eps" (the previous guided epsilon).
        skip_first / skip_last: never reuse within the first / last this many steps (fast mode).
        max_consecutive: at most this many reused steps in a row; 0 = no limit (fast mode).
    """

    mode: str = "off"
    threshold: float = 0.3
    decay: float = 1.0
    signal_depth: int = 0
    reuse: str = "denoised"
    skip_first: int = 0
    skip_last: int = 0
    max_consecutive: int = 0

    def __post_init__(self) -> None:
        self.check()  # valid by construction: a bad option fails where it is made

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"cache mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.reuse not in REUSE:
            raise ValueError(f"cache reuse must be one of {', '.join(REUSE)}, got {self.reuse!r}")
        if self.threshold < 0 or self.decay <= 0:
            raise ValueError(f"cache threshold must be >= 0 and decay > 0, got {self.threshold} / {self.decay}")
        if min(self.signal_depth, self.skip_first, self.skip_last, self.max_consecutive) < 0:
            raise ValueError("cache signal_depth, skip_first, skip_last and max_consecutive must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.threshold > 0

    @classmethod
    def seed(cls, threshold: float = 0.3, decay: float = 1.0) -> CachePolicy:
        """Exactly the seed's cache (infer.py: img_threshold 0.3, dec_img 1)."""
        return cls(mode="seed", threshold=threshold, decay=decay, signal_depth=0, reuse="denoised")


def relative_difference(previous: torch.Tensor, current: torch.Tensor) -> float:
    """mean|previous - current| / (mean|previous| + 1e-6), one scalar over the whole (CFG) batch."""
    previous, current = previous.float(), current.float()
    return float((previous - current).abs().mean() / (previous.abs().mean() + 1e-6))


@dataclass
class StepDecision:
    step: int
    diff: float | None
    threshold: float
    reused: bool
    reason: str


@dataclass
class CacheReport:
    """Which steps were computed and which reused, with the measured differences."""

    decisions: list[StepDecision] = field(default_factory=list)
    mode: str = "off"  # the policy's mode, as users name it

    @property
    def reused_steps(self) -> list[int]:
        return [d.step for d in self.decisions if d.reused]

    @property
    def computed_steps(self) -> list[int]:
        return [d.step for d in self.decisions if not d.reused]

    def summary(self) -> str:
        if self.mode == "off" and not self.decisions:
            return "off: every step computed"
        total = len(self.decisions)
        reused = self.reused_steps
        return f"{total - len(reused)}/{total} steps computed, {len(reused)} reused ({', '.join(map(str, reused))})" \
            if reused else f"{total}/{total} steps computed, none reused"


class StepCache:
    """One run's cache state: the last computed signal and result, the threshold, the decision log."""

    def __init__(self, policy: CachePolicy, total_steps: int) -> None:
        self.policy, self.total_steps = policy, total_steps
        self.reset()

    def reset(self) -> None:
        self.previous_signal: torch.Tensor | None = None
        self.cached: dict[str, torch.Tensor | float] = {}
        self.threshold = self.policy.threshold
        self.consecutive = 0
        self.report = CacheReport(mode=self.policy.mode if self.policy.enabled else "off")
        self._fresh = "first"  # why a step without a previous signal is computed

    def forget_signal(self, reason: str) -> None:
        """Compute the next step and compare later ones with its signal (the old one is not comparable)."""
        if self.previous_signal is not None:
            self.previous_signal, self._fresh = None, reason

    def undo_decision(self) -> None:
        """Forget the last decision: its step raised before finishing and may be run again."""
        if self.report.decisions:
            self.report.decisions.pop()

    def decide(self, step: int, signal: torch.Tensor | None) -> bool:
        """True: reuse the cached result at this step. Call `store` after every computed step."""
        policy = self.policy
        if not policy.enabled or signal is None:
            self._log(step, None, False, "off")
            return False
        if self.previous_signal is None or not self.cached:
            self._log(step, None, False, self._fresh)
            self._fresh = "first"
            self._pending = (signal, None)
            return False
        diff = relative_difference(self.previous_signal, signal)
        reuse, reason = diff < self.threshold, "similar" if diff < self.threshold else "changed"
        if policy.mode == "fast" and reuse:
            if step < policy.skip_first or step >= self.total_steps - policy.skip_last:
                reuse, reason = False, "protected step"
            elif policy.max_consecutive and self.consecutive >= policy.max_consecutive:
                reuse, reason = False, "max consecutive reuses"
        self._log(step, diff, reuse, reason)
        self._pending = (signal, diff)
        return reuse

    def _log(self, step: int, diff: float | None, reused: bool, reason: str) -> None:
        self.report.decisions.append(StepDecision(step, diff, self.threshold, reused, reason))

    def after_step(self, reused: bool) -> None:
        """Advance the threshold and counters after a step (the seed updates them after the sampler step)."""
        if not self.policy.enabled:
            return
        signal, diff = self._pending
        if reused:
            self.consecutive += 1
        else:
            self.consecutive = 0
            self.previous_signal = signal
            if self.policy.mode == "seed" and diff is not None:
                self.threshold = diff  # the seed returns the measured diff as the next threshold
        self.threshold *= self.policy.decay

    def store(self, **values: torch.Tensor | float) -> None:
        self.cached = dict(values)


# Named policies, as the CLI (--cache) and the DynamicStepScheduler node offer them.
PRESETS: dict[str, CachePolicy] = {
    "off": CachePolicy(),
    "seed": CachePolicy.seed(threshold=0.3),
    "fast": CachePolicy(mode="fast", threshold=0.2, signal_depth=1, reuse="eps", skip_first=3, skip_last=2,
                        max_consecutive=3),
}
