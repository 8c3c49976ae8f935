"""The README's uncertainty picture: a crop of the bundled aerial sample through `rsvl upscale --samples 4`
with tiny random-weight models (so the mechanics show, not the quality of real weights): LR input, output
(sample 0), the uncertainty layer (heat map with legend), and the guarded output.

    python scripts/uncertainty_picture.py [--data ../shared/data] [--out docs/uncertainty.jpg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rsvl_core.cli import main as rsvl
from rsvl_core.demo import write_demo_models
from rsvl_core.jobs.samples import heat_map

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--scale", "2", "--sampler", "ddim", "--steps", "8", "--refine-steps", "8", "--refine-min-size", "0",
            "--caption-max-tokens", "8", "--samples", "4", "--combine", "median", "-q", "--no-hash"]


def crop_geotiff(source: Path, target: Path, window: tuple[int, int, int, int]) -> Path:
    """A georeferenced crop (x, y, width, height) of `source`."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        crop = Window(*window)
        profile = {**src.profile, "width": window[2], "height": window[3], "transform": src.window_transform(crop),
                   "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(src.read(window=crop))
    return target


def read_rgb(path: Path) -> np.ndarray:
    """A GeoTIFF's bands as (H, W, bands) (the first three for pictures; one band repeated)."""
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read()
    return np.repeat(data, 3, axis=0).transpose(1, 2, 0) if data.shape[0] == 1 else data[:3].transpose(1, 2, 0)


def panel(image: Image.Image, title: str, width: int) -> Image.Image:
    """The image scaled (nearest) to `width`, with a title strip above."""
    scaled = image.resize((width, round(image.height * width / image.width)), Image.Resampling.NEAREST)
    out = Image.new("RGB", (width, scaled.height + 18), "white")
    out.paste(scaled, (0, 18))
    ImageDraw.Draw(out).text((4, 3), title, fill="black")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "uncertainty.jpg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_demo_models(root / "models")
        lr_path = crop_geotiff(args.data / "OSBS_029.tif", root / "osbs.tif", (120, 120, 64, 64))
        base = ["upscale", str(lr_path), "--models-dir", str(root / "models"), *SETTINGS]
        assert rsvl([*base, "-o", str(root / "plain")]) == 0
        record = json.loads((root / "plain" / "osbs_x2.json").read_text())["uncertainty"]
        guard = round((record["mean_std"] + record["p95_std"]) / 2, 1)  # a few disagreeing spots replaced
        assert rsvl([*base, "-o", str(root / "guard"), "--guard", str(guard), "--guard-feather", "4"]) == 0
        guarded = json.loads((root / "guard" / "osbs_x2.json").read_text())["uncertainty"]
        spread = read_rgb(root / "plain" / "osbs_x2_uncertainty.tif")[..., 0].astype(np.float32)
        width = 200
        mask = Image.fromarray(np.where(spread > guard, 255, 0).astype(np.uint8)).convert("RGB")
        panels = [panel(Image.fromarray(read_rgb(lr_path)), "LR input 64 px (x2)", width),
                  panel(Image.fromarray(read_rgb(root / "plain" / "osbs_x2.tif")), "output: median of 4", width),
                  panel(Image.fromarray(heat_map(spread, guard)), "uncertainty layer (std)", width),
                  panel(mask, f"std > guard {guard:g} (white)", width),
                  panel(Image.fromarray(read_rgb(root / "guard" / "osbs_x2.tif")),
                        f"guarded: {100 * guarded['guard']['fraction_replaced']:.1f}% -> stage 1", width)]
    height = max(p.height for p in panels)
    sheet = Image.new("RGB", (width * len(panels) + 8 * (len(panels) - 1), height + 20), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * (width + 8), 0))
    ImageDraw.Draw(sheet).text((4, height + 4), "TINY RANDOM-WEIGHT MODELS (rsvl demo): shows the mechanics only, not "
                               "the quality of the real weights. Source: NEON OSBS_029 (CC0).", fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=88)
    print(f"wrote {args.out}: mean std {record['mean_std']:.1f}, p95 {record['p95_std']:.1f} levels; guard {guard} "
          f"replaced {100 * guarded['guard']['fraction_replaced']:.1f}%")


if __name__ == "__main__":
    main()
