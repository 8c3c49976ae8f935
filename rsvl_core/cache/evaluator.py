"""One cached evaluation per sampler step, for any network split in two: begin (to a depth), then finish.

Both stages use it: SR3 (stage 1, per pixel tile) and the SDXL refiner (per latent tile). A step runs
`begin` on every tile batch, hands the joined signal to the policy's `StepCache`, and then either
`replay`s what the last computed step remembered or `finish`es the evaluations it began (nothing is
computed twice). The caller never touches the cache's state; the decisions come back as a value
(`report`). Tiles are explicit lists in, lists out: nothing depends on the order a helper visits them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

import torch

from .policy import CachePolicy, CacheReport, StepCache

State = TypeVar("State")   # what `begin` keeps for one tile batch (its partial activations)
Result = TypeVar("Result")  # what one step returns (a noise prediction, a denoised latent, ...)


class CachedEvaluator(Generic[State, Result]):
    """signal -> decide -> reuse or finish, one call per sampler step.

    Args:
        policy: when a step may be reused (`CachePolicy`; off = always finish).
        total_steps: the run's length (for protected first/last steps).
    """

    def __init__(self, policy: CachePolicy, total_steps: int) -> None:
        self._cache = StepCache(policy, total_steps)
        self._steps = 0
        self._layout: object = None

    @property
    def policy(self) -> CachePolicy:
        return self._cache.policy

    @property
    def report(self) -> CacheReport:
        """The decisions so far (step, measured difference, threshold, reused or not, why)."""
        return self._cache.report

    def step(
        self,
        states: Sequence[State],
        signal: Callable[[State], torch.Tensor],
        finish: Callable[[Sequence[State]], Result],
        remember: Callable[[Result], Mapping[str, torch.Tensor]],
        replay: Callable[[Mapping[str, torch.Tensor]], Result],
        step: int | None = None,
        layout: object = None,
    ) -> Result:
        """One step: `states` from `begin` on every tile batch; `finish` completes them all into the result;
        `remember` names what a later reused step needs; `replay` builds a reused step's result from that.

        `layout` names how the signal was cut (the tile size and overlap): when it changes (tiles halved after
        running out of memory) the step is computed, since signals of different tiles cannot be compared. A step
        that raises is not recorded, so that the caller may run it again.
        """
        index = self._steps if step is None else step
        if layout != self._layout:
            self._layout = layout
            self._cache.forget_signal("new tiles")
        joined = torch.cat([signal(state).flatten() for state in states])
        reuse = self._cache.decide(index, joined)
        try:
            if reuse:
                result = replay(self._cache.cached)
            else:
                result = finish(states)
                self._cache.store(**remember(result))
        except BaseException:
            self._cache.undo_decision()
            raise
        self._cache.after_step(reuse)
        self._steps += 1
        return result
