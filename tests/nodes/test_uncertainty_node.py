"""RSVLUncertainty through the ComfyUI stand-in: IMAGE batch of N samples -> combined IMAGE, heat map, summary."""

from __future__ import annotations

import pytest
import torch


def _bhwc(batch: torch.Tensor) -> torch.Tensor:
    return batch.movedim(1, -1).contiguous()


def test_uncertainty_node_combines_maps_and_guards(comfy):
    from rsvl_core.jobs.samples import LEGEND_HEIGHT

    node = comfy.node("RSVLUncertainty")
    base = torch.full((3, 3, 20, 30), 0.5)
    base[:, :, 5:9, 10:14] = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1)  # the samples disagree in one spot
    stage1 = torch.full((1, 3, 20, 30), 0.25)
    out = node.execute(samples=_bhwc(base), combine="median", guard=20.0, feather=0, stage_1=_bhwc(stage1))
    image, heat, summary = out.args
    assert image.shape == (1, 20, 30, 3) and heat.shape == (1, 20 + LEGEND_HEIGHT, 30, 3)
    assert torch.allclose(image[0, 5:9, 10:14], torch.full((4, 4, 3), 0.25))   # guarded: stage 1
    assert torch.allclose(image[0, :5], torch.full((5, 30, 3), 0.5))           # elsewhere: the median
    assert "3 samples, combined by median" in summary and "2.67% of pixels replaced" in summary
    assert heat[0, 6, 11].mean() > heat[0, 0, 0].mean() + 0.5                   # bright where they disagree
    plain = node.execute(samples=_bhwc(base), combine="first", guard=0.0, feather=8).args[0]
    assert torch.equal(plain, _bhwc(base[:1]))


def test_uncertainty_node_says_what_it_needs(comfy):
    node = comfy.node("RSVLUncertainty")
    one = torch.rand(1, 8, 8, 3)
    with pytest.raises(Exception, match="needs N >= 2 samples"):
        node.execute(samples=one, combine="first", guard=0.0, feather=8)
    two = torch.rand(2, 8, 8, 3)
    with pytest.raises(Exception, match="guard > 0 needs the stage_1 image"):
        node.execute(samples=two, combine="first", guard=5.0, feather=8)
    with pytest.raises(Exception, match="stage_1 image is 4x4, the samples are 8x8"):
        node.execute(samples=two, combine="first", guard=5.0, feather=8, stage_1=torch.rand(1, 4, 4, 3))
