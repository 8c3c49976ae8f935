"""The bad-input corpus: every odd file gets a clear error naming it, or a documented conversion; no partial files."""

from __future__ import annotations

import importlib.util
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsvl_core.cli import main
from rsvl_core.kit import image as image_module
from rsvl_core.kit.errors import InputImageError
from rsvl_core.kit.image import MAX_INPUT_PIXELS, read_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes, idat: bytes | None = None) -> bytes:
    """A PNG written by hand (for what Pillow will not write: 16-bit RGB, huge headers)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = zlib.compress(raw) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def rgb16_png(values: np.ndarray) -> bytes:
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))
    return png_bytes(width, height, 16, 2, raw)


# name -> (bytes, expected shape or None, notes expected (substrings), error match)
def corpus() -> dict[str, tuple[bytes, tuple[int, ...] | None, list[str], str | None]]:
    good_png = encoded(Image.fromarray(RGB), "PNG")
    good_jpg = encoded(Image.fromarray(RGB), "JPEG", quality=95)
    deep = np.full((6, 7, 3), 0x1234, dtype=np.uint16)
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    pages = io.BytesIO()
    frames[0].save(pages, "TIFF", save_all=True, append_images=frames[1:])
    return {
        "rgb.png": (good_png, (6, 7), [], None),
        "gray.png": (encoded(Image.fromarray(RGB[..., 0]), "PNG"), (6, 7), ["grayscale replicated to RGB"], None),
        "bilevel.png": (encoded(Image.fromarray(RGB[..., 0] > 127), "PNG"), (6, 7), ["grayscale replicated"], None),
        "rgba.png": (encoded(Image.fromarray(np.dstack([RGB, RGB[..., :1]])), "PNG"), (6, 7),
                     ["alpha channel ignored"], None),
        "palette.png": (encoded(Image.fromarray(RGB).convert("P"), "PNG"), (6, 7), ["palette expanded to RGB"], None),
        "gray16.png": (encoded(Image.fromarray(np.full((6, 7), 65535, np.uint16)), "PNG"), (6, 7),
                       ["16-bit grayscale scaled by 1/65535"], None),
        "rgb16.png": (rgb16_png(deep), (6, 7), ["16-bit RGB decoded at 8 bits"], None),
        "cmyk.jpg": (encoded(Image.fromarray(RGB).convert("CMYK"), "JPEG"), (6, 7), ["CMYK converted to RGB"], None),
        "pages.tif": (pages.getvalue(), (6, 7), ["first of 2 frames used"], None),
        "one_pixel.png": (encoded(Image.fromarray(RGB[:1, :1]), "PNG"), (1, 1), [], None),
        "float_ok.tif": (encoded(Image.fromarray(np.full((6, 7), 0.25, np.float32), "F"), "TIFF"), (6, 7),
                         ["float grayscale replicated to RGB"], None),
        "float_range.tif": (encoded(Image.fromarray(np.full((6, 7), 1200.0, np.float32), "F"), "TIFF"), None, [],
                            r"float image with values in \[1200, 1200\], expected \[0, 1\].*rsvl\[geo\]"),
        "empty.png": (b"", None, [], r"file is empty \(0 bytes\)"),
        "text.png": (b"this is a text file, not a picture\n", None, [], "not a readable image"),
        "random.jpg": (RNG.integers(0, 256, 500, dtype=np.uint8).tobytes(), None, [], "not a readable image"),
        "corrupt.png": (good_png[:16] + b"\x00" * (len(good_png) - 16), None, [], "not a readable image"),
        "truncated.png": (good_png[: len(good_png) // 2], None, [], "(?i)not a readable image .*truncated"),
        "truncated_jpeg.jpg": (good_jpg[: len(good_jpg) // 2], None, [], "(?i)not a readable image .*truncated"),
        "zero_size.png": (png_bytes(0, 5, 8, 2, b""), None, [], "not a readable image|no pixels"),
        # a 50000 x 50000 header with almost no data: refused from the header, before any decoding
        "huge.png": (png_bytes(50_000, 50_000, 8, 2, b"", idat=zlib.compress(b"\x00" * 64)), None, [],
                     r"image is (50000x50000 \()?2,500,000,000 pixels\)?, over the 100,000,000-pixel limit"),
        "rgb16_tiff.tif": (b"", None, [], None),  # filled in by the test (needs a 16-bit RGB TIFF writer)
    }


def write_corpus(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    cases = corpus()
    for name, (data, *_rest) in cases.items():
        (folder / name).write_bytes(data)
    # 16-bit RGB TIFF, which Pillow cannot open: hand-made, uncompressed, one strip
    width, height = 4, 3
    pixels = np.full((height, width, 3), 1000, "<u2").tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 0), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels))]
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * len(entries) + 4
    data_offset = bits_offset + 6
    entries[2] = (258, 3, 3, bits_offset)
    entries[5] = (273, 4, 1, data_offset)
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) if e[1] == 4 or e[0] == 258
                                                     else struct.pack("<HHIHH", *e, 0) for e in entries)
    tiff = b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + b"\x00" * 4 + struct.pack("<HHH", 16, 16, 16) + pixels
    (folder / "rgb16_tiff.tif").write_bytes(tiff)
    cases["rgb16_tiff.tif"] = (tiff, (3, 4), ["16-bit RGB decoded at 8 bits"], None)  # Pillow reads this one at 8 bits
    return cases


def test_every_corpus_file_is_converted_with_a_note_or_refused_by_name(tmp_path):
    cases = write_corpus(tmp_path / "corpus")
    for name, (_, shape, notes, error) in cases.items():
        path = tmp_path / "corpus" / name
        if error is not None:
            with pytest.raises(InputImageError, match=error) as info:
                read_image(path)
            assert str(info.value).startswith(str(path)), (name, str(info.value))
            assert "\n" not in str(info.value)
            continue
        tensor, got = read_image(path)
        assert tensor.shape == (1, 3, *shape) and tensor.dtype == torch.float32, name
        assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0, name
        assert len(got) == len(notes) and all(n in g for n, g in zip(notes, got, strict=True)), (name, got)


def test_conversions_give_the_documented_numbers(tmp_path):
    write_corpus(tmp_path)
    gray16, _ = read_image(tmp_path / "gray16.png")
    assert float(gray16.min()) == float(gray16.max()) == 1.0
    rgb16, _ = read_image(tmp_path / "rgb16.png")  # 0x1234 -> high byte 0x12 = 18
    assert torch.allclose(rgb16, torch.full_like(rgb16, 18 / 255))
    tif16, _ = read_image(tmp_path / "rgb16_tiff.tif")  # 1000 -> high byte 3
    assert torch.allclose(tif16, torch.full_like(tif16, 3 / 255))
    one, _ = read_image(tmp_path / "one_pixel.png")
    assert torch.allclose(one[0, :, 0, 0], torch.from_numpy(RGB[0, 0].astype(np.float32) / 255))
    rgba, _ = read_image(tmp_path / "rgba.png")
    assert torch.allclose(rgba[0].permute(1, 2, 0), torch.from_numpy(RGB.astype(np.float32) / 255))
    gray, _ = read_image(tmp_path / "gray.png")
    assert torch.equal(gray[0, 0], gray[0, 1]) and torch.equal(gray[0, 1], gray[0, 2])
    frames, _ = read_image(tmp_path / "pages.tif")
    assert frames.shape == (1, 3, 6, 7)
    flt, _ = read_image(tmp_path / "float_ok.tif")
    assert float(flt.min()) == float(flt.max()) == 0.25


def test_pixel_limit_is_explicit_and_checked_before_decoding(tmp_path, monkeypatch):
    assert MAX_INPUT_PIXELS == 100_000_000
    Image.fromarray(RGB).save(tmp_path / "small.png")
    monkeypatch.setattr(image_module, "MAX_INPUT_PIXELS", 41)
    with pytest.raises(InputImageError, match=r"small.png: image is 7x6 \(42 pixels\), over the 41-pixel limit"):
        read_image(tmp_path / "small.png")
    monkeypatch.setattr(image_module, "MAX_INPUT_PIXELS", 42)
    assert read_image(tmp_path / "small.png")[0].shape == (1, 3, 6, 7)


def test_a_tiff_pillow_cannot_decode_points_to_the_geotiff_reader(tmp_path):
    (tmp_path / "ms.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + b"\x00" * 6)  # a TIFF with an empty IFD
    hint = r"ms.tif: not a readable image .*16-bit RGB and float TIFFs .*rsvl\[geo\]"
    with pytest.raises(InputImageError, match=hint):
        read_image(tmp_path / "ms.tif")


def test_a_folder_and_a_missing_file_are_named(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputImageError, match=r"dir.png: is a folder"):
        read_image(tmp_path / "dir.png")
    with pytest.raises(InputImageError, match=r"gone.png: input image not found"):
        read_image(tmp_path / "gone.png")


def test_folder_run_reports_each_bad_file_and_writes_only_complete_outputs(tmp_path, capsys):
    from rsvl_core.demo import write_demo_models

    models = tmp_path / "models"
    write_demo_models(models)
    cases = write_corpus(tmp_path / "in")
    # the CLI reads every TIFF through rasterio when it is installed: float data out of [0, 1] is stretched
    # as for GeoTIFFs (with a note), where the Pillow reader alone refuses it
    stretched = {"float_range.tif"} if importlib.util.find_spec("rasterio") else set()
    cases = {name: (case[0], (6, 7), case[2], None) if name in stretched else case for name, case in cases.items()}
    out = tmp_path / "out"
    code = main(["upscale", str(tmp_path / "in"), "-o", str(out), "--scale", "2", "--models-dir", str(models),
                 "--stage1-only", "--sampler", "ddim", "--steps", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 1  # some inputs failed, the rest ran
    good = sorted(name for name, (_, shape, _, error) in cases.items() if error is None)
    bad = sorted(name for name, (_, _, _, error) in cases.items() if error is not None)
    assert f"{len(good)} written, 0 skipped (already exist; --overwrite replaces), {len(bad)} failed" in err
    for name in bad:
        assert f"failed: {tmp_path / 'in' / name}: " in err, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]  # no temp files
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{Path(name).stem}_x2.png" for name in good)
    assert not [p.name for p in out.iterdir() if p.name.split("_x2")[0] in {Path(n).stem for n in bad}]
    for name in good:
        shape = cases[name][1]
        with Image.open(out / f"{Path(name).stem}_x2.png") as img:
            assert img.size == (shape[1] * 2, shape[0] * 2), name
