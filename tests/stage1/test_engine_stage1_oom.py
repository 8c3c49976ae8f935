"""Stage 1 out of memory: SR3 and spandrel tiles are halved and the work run again (issue 22, item 7).

The models are real tiny networks; a forward pre-hook raises torch's out-of-memory error when a tile is larger
than a limit, as a GPU would. The result must equal a run asked for the smaller tile from the start.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from rsvl_testing import tiny_compact, tiny_sr3_model
from safetensors.torch import save_file

from rsvl_core.cache import CachePolicy, CacheReport
from rsvl_core.kit.errors import TileMemoryError
from rsvl_core.stage1 import Stage1Options, upscale_stage1
from rsvl_core.stage1.spandrel_sr import SpandrelOptions, load_spandrel_stage1, upscale_spandrel


def oom_above(module: torch.nn.Module, limit: int):
    """Make `module` raise torch.OutOfMemoryError on inputs with an edge above `limit` (remove the handle after)."""

    def hook(_module, args):
        if max(args[0].shape[-2:]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB (test)")

    return module.register_forward_pre_hook(hook)


FAST_CACHE = CachePolicy(mode="fast", threshold=10.0, reuse="eps", signal_depth=1, skip_first=1, skip_last=1,
                         max_consecutive=1)


@pytest.mark.parametrize("cache", [CachePolicy(), FAST_CACHE], ids=["no cache", "step cache"])
def test_engine_oom_sr3_halves_its_tile_and_equals_the_smaller_tile(cache):
    model = tiny_sr3_model(seed=0)
    image = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    options = Stage1Options(sampler="ddim", steps=5, tile_size=64, tile_overlap=16, tile_batch=2, cache=cache)
    # the up path's last block sees whole tiles: with a cache the error comes after the step's decision
    handle = oom_above(model.unet.final_conv, 40)
    try:
        tiling, report = {}, CacheReport()
        out = upscale_stage1(model, image, 4, options, seed=3, cache_report=report, tiling=tiling)
    finally:
        handle.remove()
    direct_report = CacheReport()
    direct = upscale_stage1(model, image, 4, replace(options, tile_size=32), seed=3, cache_report=direct_report)
    assert out.shape == (1, 3, 80, 96) and torch.equal(out, direct)
    assert tiling == {"tile_size": 32, "tile_overlap": 16, "requested_tile_size": 64, "out_of_memory_at": [64]}
    # one decision per step (the step that ran out of memory is not counted twice), the same as asked for 32
    assert [(d.step, d.reused) for d in report.decisions] == [(d.step, d.reused) for d in direct_report.decisions]
    if cache.enabled:
        assert len(report.decisions) == 5 and report.reused_steps


def test_engine_oom_sr3_gives_up_at_its_minimum_tile():
    model = tiny_sr3_model(seed=0)
    handle = oom_above(model.unet.final_conv, 8)
    try:
        with pytest.raises(TileMemoryError, match=r"stage 1 \(SR3\): out of memory even with 32-pixel tiles"):
            upscale_stage1(model, torch.rand(1, 3, 20, 24), 4, Stage1Options(sampler="ddim", steps=2))
    finally:
        handle.remove()


def test_engine_oom_spandrel_halves_its_tile_and_equals_the_smaller_tile(tmp_path):
    save_file(tiny_compact(), tmp_path / "compact.safetensors")
    model = load_spandrel_stage1(tmp_path / "compact.safetensors")
    lowres = torch.rand(1, 3, 40, 57, generator=torch.Generator().manual_seed(1))
    handle = oom_above(model.descriptor.model, 20)
    try:
        out, info = upscale_spandrel(model, lowres, 4, SpandrelOptions(tile_size=32, tile_overlap=12, tile_batch=2))
    finally:
        handle.remove()
    direct, direct_info = upscale_spandrel(model, lowres, 4, SpandrelOptions(tile_size=16, tile_overlap=8,
                                                                              tile_batch=2))
    assert out.shape == (1, 3, 160, 228) and torch.equal(out, direct)
    assert info["tiles"] == direct_info["tiles"] > 1
    # 32 ran out of memory; 16 is also the stage's minimum; the overlap is kept at most half the tile
    assert info["tiling"] == {"tile_size": 16, "tile_overlap": 8, "requested_tile_size": 32,
                              "out_of_memory_at": [32]}
