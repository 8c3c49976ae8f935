"""Tile plans and feathered blending."""

from __future__ import annotations

import pytest
import torch

from rsvl_core.kit.tiling import Feather, Tile, pad_to_multiple, plan_tiles, run_tiled, tile_starts, tile_weights


@pytest.mark.parametrize("length,tile,overlap", [(1000, 224, 32), (225, 224, 32), (96, 64, 16), (500, 100, 0)])
def test_tiles_cover_everything_with_full_size_tiles(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_small_image_is_one_tile():
    assert plan_tiles(100, 50, 224, 32) == plan_tiles(100, 50, 0, 0)
    assert len(plan_tiles(100, 50, 224, 32)) == 1
    assert len(plan_tiles(400, 1000, 224, 32)) == 2 * 6


def test_feather_weights_are_positive_and_smooth():
    w = tile_weights(Tile(10, 74, 10, 106), 100, 200, Feather(16))  # a tile with neighbours on every side
    assert w.min() > 0 and w.max() == 1
    assert torch.all(w[32, :16].diff() > 0) and torch.all(w[32, -16:].diff() < 0)
    assert torch.equal(tile_weights(Tile(10, 18, 10, 18), 100, 100, Feather(0)), torch.ones(8, 8))


def test_run_tiled_reassembles_a_pointwise_function_exactly():
    x = torch.randn(2, 3, 70, 130)
    calls = []

    def fn(tiles):
        calls.append(tiles.shape)
        return tiles * 2 + 1

    out = run_tiled(fn, x, tile_size=32, overlap=8, tile_batch=3)
    torch.testing.assert_close(out, x * 2 + 1)
    n_tiles = len(plan_tiles(70, 130, 32, 8))
    assert sum(shape[0] for shape in calls) == 2 * n_tiles
    assert max(shape[0] for shape in calls) == 2 * 3  # tile_batch tiles of a batch of 2
    assert all(shape[-2:] == (32, 32) for shape in calls)  # memory is bounded by the tile size


def test_pad_to_multiple():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded, (ph, pw) = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8) and (ph, pw) == (3, 1)
    assert torch.equal(padded[..., :5, :7], x)
    tiny, _ = pad_to_multiple(torch.ones(1, 3, 2, 2), 16)  # too small to reflect: replicate
    assert tiny.shape == (1, 3, 16, 16) and torch.all(tiny == 1)
