"""SR3's faithful loop on static buffers (stage1/graphs.py): no host sync in the loop, the plain loop's numbers."""

from __future__ import annotations

import pytest
import torch
from rsvl_testing import tiny_sr3_model
from torch.utils._python_dispatch import TorchDispatchMode

from rsvl_core.stage1 import Stage1Options, upscale_stage1
from rsvl_core.stage1.graphs import (
    draw_all_noise,
    faithful_step,
    faithful_step_table,
    graph_eligible,
    sample_faithful_static,
)
from rsvl_core.stage1.sampler import gaussian_noise_source

STEPS = 40


class HostSyncs(TorchDispatchMode):
    """Counts ops that read a tensor's value on the host (`.item()`, `float(t)`, `if t:`): each a sync on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _inputs(model, size: int = 32):
    image = torch.rand(1, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(1))
    return image, model.inference_schedule(STEPS)


def test_graph_static_loop_equals_the_plain_loop_exactly():
    model = tiny_sr3_model()
    image, _ = _inputs(model)
    options = Stage1Options(steps=STEPS, tile_size=0)
    plain = upscale_stage1(model, image, 4, options, seed=7)
    static = upscale_stage1(model, image, 4, options, seed=7, static_loop=True)
    assert static.shape == plain.shape == (1, 3, 32, 32)
    assert torch.equal(static, plain)  # same float32 ops in the same order: bit-identical
    other_seed = upscale_stage1(model, image, 4, options, seed=8, static_loop=True)
    assert not torch.equal(other_seed, plain)


def test_graph_loop_body_has_no_host_sync_and_the_plain_loop_has():
    model = tiny_sr3_model()
    image, schedule = _inputs(model)
    condition = torch.nn.functional.interpolate(image, scale_factor=4, mode="bicubic") * 2 - 1
    options = Stage1Options(steps=STEPS, tile_size=0)
    source = gaussian_noise_source(torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.inference_mode():
        table = faithful_step_table(schedule)
        x, noises = draw_all_noise(source, tuple(condition.shape), STEPS)
        with HostSyncs() as syncs:
            for i in range(STEPS):
                x = faithful_step(model.unet, condition, x, table[i], noises[i])
    assert syncs.count == 0
    assert torch.isfinite(x).all()
    with HostSyncs() as plain_syncs:  # the detector does fire: the plain loop reads its schedule on the host
        upscale_stage1(model, image, 4, options, seed=0)
    assert plain_syncs.count >= STEPS


def test_graph_step_traces_with_zero_graph_breaks():
    model = tiny_sr3_model()
    image, schedule = _inputs(model)
    condition = torch.rand(1, 3, 32, 32) * 2 - 1
    row = faithful_step_table(schedule)[3]
    with torch.inference_mode():
        explanation = torch._dynamo.explain(faithful_step)(model.unet, condition, torch.randn_like(condition), row,
                                                           torch.randn_like(condition))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_graph_eligibility_falls_back_where_it_does_not_apply():
    unet = tiny_sr3_model().unet
    shape = (1, 3, 32, 32)
    assert graph_eligible(unet, shape, Stage1Options(tile_size=0))
    assert graph_eligible(unet, shape, Stage1Options(tile_size=224))
    assert not graph_eligible(unet, (1, 3, 256, 256), Stage1Options(tile_size=224))   # several tiles
    assert not graph_eligible(unet, shape, Stage1Options(sampler="dpmpp", tile_size=0))
    from rsvl_core.cache import PRESETS
    assert not graph_eligible(unet, shape, Stage1Options(tile_size=0, cache=PRESETS["fast"]))


def test_graph_static_loop_reports_progress_and_can_be_cancelled():
    model = tiny_sr3_model()
    image, schedule = _inputs(model)
    condition = torch.rand(1, 3, 32, 32) * 2 - 1
    seen = []

    def callback(step, total, stage, preview=None):
        seen.append((step, total, stage, preview))
        if step == 5:
            raise KeyboardInterrupt

    source = gaussian_noise_source(torch.Generator().manual_seed(0), torch.device("cpu"))
    with pytest.raises(KeyboardInterrupt):
        sample_faithful_static(model.unet, condition, (1, 3, 32, 32), schedule, Stage1Options(steps=STEPS),
                               source, callback)
    assert seen == [(i, STEPS, "stage1", None) for i in range(1, 6)]
