"""Reading images into the core convention and the resampling the model was trained with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rsvl_core.kit.errors import InputImageError
from rsvl_core.kit.image import bicubic_resize, read_image, write_image_atomic


def test_modes_are_converted_and_noted(tmp_path):
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    cases = {
        "rgb.png": (Image.fromarray(rgb), []),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full((4, 5), 7, np.uint8)])), ["alpha channel ignored"]),
        "gray.png": (Image.fromarray(rgb[..., 0]), ["grayscale replicated to RGB"]),
        "pal.png": (Image.fromarray(rgb).convert("P"), ["palette expanded to RGB"]),
        "deep.png": (Image.fromarray(np.full((4, 5), 65535, np.uint16)), ["16-bit"]),
    }
    for name, (img, notes) in cases.items():
        img.save(tmp_path / name)
        tensor, got = read_image(tmp_path / name)
        assert tensor.shape == (1, 3, 4, 5) and tensor.dtype == torch.float32, name
        assert 0 <= tensor.min() and tensor.max() <= 1, name
        assert all(any(n in g for g in got) for n in notes) and len(got) == len(notes), (name, got)
    torch.testing.assert_close(read_image(tmp_path / "rgb.png")[0][0].permute(1, 2, 0),
                               torch.from_numpy(rgb.astype(np.float32) / 255))
    assert torch.all(read_image(tmp_path / "deep.png")[0] == 1.0)


def test_bad_files_are_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name, match in (("empty.png", "empty"), ("text.jpg", "not a readable image"), ("none.png", "not found")):
        with pytest.raises(InputImageError, match=match) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)


def test_bicubic_matches_pil_and_keeps_exact_size():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    tensor = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    ours = bicubic_resize(tensor, (28, 44))
    pil = np.asarray(Image.fromarray(rgb).resize((44, 28), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    assert ours.shape == (1, 3, 28, 44)
    # PIL's 8-bit path rounds to 1/255; ours stays in float
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - pil).max() <= 1 / 255 + 1e-6
    torch_bicubic = torch.nn.functional.interpolate(tensor, (28, 44), mode="bicubic").clamp(0, 1)
    assert (torch_bicubic - ours).abs().max() > 2 / 255  # a different kernel: why we do not use it


def test_write_is_atomic_and_round_trips(tmp_path):
    image = torch.rand(1, 3, 6, 9)
    path = write_image_atomic(image, tmp_path / "sub" / "out.png")
    back, _ = read_image(path)
    assert (back - image).abs().max() <= 0.5 / 255 + 1e-6
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]
    with pytest.raises(ValueError):
        write_image_atomic(torch.rand(2, 3, 4, 4), tmp_path / "batch.png")
    assert not (tmp_path / "batch.png").exists() and not list(tmp_path.glob(".batch*"))
