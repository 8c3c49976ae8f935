"""Peak memory of a windowed run per output format: PNG (the output held as uint8 until written) vs GeoTIFF
(written strip by strip). Each case runs `rsvl upscale` in its own process; the peak is that process's
maximum resident set size. Tiny SR3 (random weights), stage 1 only: the scene buffers dominate.

    python benchmarks/window_memory.py [--repeat 2] [--window 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_scene(folder: Path, repeat: int) -> tuple[Path, Path]:
    """The YELL crop tiled `repeat` x `repeat` times, as a PNG and as a GeoTIFF (OSBS's CRS)."""
    import rasterio
    from rasterio.transform import from_origin

    tile = np.asarray(Image.open(SHARED / "YELL_541000_4977000_crop.png").convert("RGB"))
    scene = np.tile(tile, (repeat, repeat, 1))
    png, tif = folder / "scene_png.png", folder / "scene_tif.tif"
    Image.fromarray(scene).save(png)
    with rasterio.open(SHARED / "OSBS_029.tif") as src:
        crs = src.crs
    profile = {"driver": "GTiff", "width": scene.shape[1], "height": scene.shape[0], "count": 3, "dtype": "uint8",
               "crs": crs, "transform": from_origin(541000, 4977000, 0.1, 0.1), "tiled": True, "compress": "deflate"}
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(scene.transpose(2, 0, 1))
    return png, tif


def run(source: Path, models: Path, out: Path, window: int) -> tuple[int, float]:
    args = [sys.executable, "-m", "rsvl_core", "upscale", str(source), "-o", str(out), "--scale", "2", "--models-dir",
            str(models), "--stage1-only", "--sampler", "ddim", "--steps", "1", "--window-size", str(window), "-q",
            "--overwrite", "--no-hash"]
    # a fresh wrapper per case, so the peak is this case's alone (RUSAGE_CHILDREN keeps the maximum of all)
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", wrapper, *args], check=True, capture_output=True, text=True)
    peak = int(done.stdout.split()[-1]) * 1024
    record = json.loads(next(out.glob(f"{source.stem}_x2.json")).read_text())
    return peak, record["peak_memory_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="tile the 1249x1035 YELL crop this many times a side")
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    from rsvl_core.demo import write_demo_models

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_demo_models(root / "models")
        png, tif = make_scene(root, args.repeat)
        height, width = np.asarray(Image.open(png)).shape[:2]
        print(f"scene {width}x{height} -> {width * 2}x{height * 2} output ({width * height * 4 * 3 / 2**20:.0f} MiB "
              f"as uint8), windows of {args.window} px, tiny SR3, one process per case")
        print(f"{'output':<8} {'peak RSS MiB':>13} {'run record MiB':>15}")
        for name, source in (("PNG", png), ("GeoTIFF", tif)):
            peak, recorded = run(source, root / "models", root / f"out_{name}", args.window)
            print(f"{name:<8} {peak / 2**20:>13.0f} {recorded / 2**20:>15.0f}")


if __name__ == "__main__":
    main()
