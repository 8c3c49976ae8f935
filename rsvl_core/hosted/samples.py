"""A host's batch of N samples of one scene -> the combined image, the heat-mapped spread and a summary line; the
guard falls back to a stage-1 image (`rsvl_core.jobs.samples`, as `rsvl upscale --samples N`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..jobs import samples as engine
from .handles import NodeError
from .settings import setting_values


@dataclass
class UncertaintyOutputs:
    image: torch.Tensor       # (1, 3, H, W) in [0, 1]: combined, guarded
    heat_map: torch.Tensor    # (1, 3, H + legend, W) in [0, 1]
    summary: str


def uncertainty_outputs(samples: torch.Tensor, stage1: torch.Tensor | None = None, **inputs) -> UncertaintyOutputs:
    """samples (N, 3, H, W) in [0, 1], N >= 2; stage1 (1 or N, 3, H, W): the guard's fallback (its first image).

    `inputs` are the node's widgets (combine, guard, feather), turned into the engine's options as the CLI's are.
    """
    count = samples.shape[0]
    if count < 2:
        raise NodeError(f"samples: got a batch of {count} image; the spread needs N >= 2 samples of the same scene "
                        "(e.g. RepeatImageBatch before the stage-1 node: each element gets its own noise)")
    values = setting_values("RSVLUncertainty", inputs)
    options = engine.UncertaintyOptions(samples=count, combine=values.get("combine", "first"),
                                        guard=float(values.get("guard", 0.0)),
                                        feather=int(values.get("guard_feather", engine.DEFAULT_FEATHER)))
    if stage1 is None:
        if options.guard > 0:
            raise NodeError("guard > 0 needs the stage_1 image input (the fallback where the samples disagree)")
        fallback = samples[:1]
    else:
        if tuple(stage1.shape[-2:]) != tuple(samples.shape[-2:]):
            raise NodeError(f"stage_1 image is {stage1.shape[-1]}x{stage1.shape[-2]}, the samples are "
                            f"{samples.shape[-1]}x{samples.shape[-2]}: connect the stage-1 output of the same scene")
        fallback = stage1[:1]
    reduced = engine.reduce_samples(samples.float().cpu(), fallback.float().cpu(), options)
    summary = engine.summarise_spread(reduced.spread, options.guard)
    picture = engine.heat_map(reduced.spread, options.guard)
    heat = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1)[None].float() / 255
    lines = [f"{count} samples, combined by {options.combine}", summary.text()]
    if options.guard > 0:
        lines.append(f"guard {options.guard:g} levels: {100 * reduced.fraction_replaced:.2f}% of pixels replaced by "
                     f"the stage-1 image (feathered over {options.feather} px)")
    return UncertaintyOutputs(reduced.image, heat, "\n".join(lines))
