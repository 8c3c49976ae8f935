"""The README's side-by-side picture of core SUPIR and ours: input | core SUPIRApply + KSampler | our refiner.

Written by test_core_supir_compare.py when RSVL_WRITE_DOCS_PICTURES=1 (from the images the 0.20.1 server saved),
or by hand from three saved images:

    python tests/nodes/core_supir_picture.py INPUT.png CORE.png OURS.png [--out docs/core_supir_vs_rsvl.jpg]

The models are tiny and random (SDXL-shaped test files): the picture shows that both paths run on the same
inputs, not what either gives with the real weights; its footer says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "core_supir_vs_rsvl.jpg"
FOOTER = "tiny random models — not a quality comparison"
DETAIL = "random SDXL-shaped test weights, one core SUPIR MODEL_PATCH, same image and seed; ComfyUI 0.20.1, CPU"
ENV = "RSVL_WRITE_DOCS_PICTURES"  # set to 1: the test writes the picture


def font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans where the system has it (the em dash included), else Pillow's own font."""
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def panel(image: np.ndarray, lines: list[str], width: int) -> Image.Image:
    """The image scaled (nearest: the pixels stay visible) to `width`, with its title lines above."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    scaled = picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.NEAREST)
    top = 6 + 17 * len(lines)
    out = Image.new("RGB", (width, top + scaled.height), "white")
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 4 + 17 * i), line, fill="black", font=font(13 if i == 0 else 11))
    out.paste(scaled, (0, top))
    return out


def write_picture(input_image: np.ndarray, core: np.ndarray, ours: np.ndarray, out: Path = OUT,
                  core_lines: tuple[str, ...] = (), ours_lines: tuple[str, ...] = (),
                  input_lines: tuple[str, ...] = (), width: int = 256) -> Path:
    """input | core SUPIRApply + KSampler | ours, each (H, W, 3) uint8, titled, with the footer; saved as JPEG."""
    panels = [panel(input_image, ["input (the refiners' image)", *input_lines], width),
              panel(core, ["core: SUPIRApply + KSampler", *core_lines], width),
              panel(ours, ["rsvl: Super Resolution Refine", *ours_lines], width)]
    gap, height = 8, max(p.height for p in panels)
    sheet = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * gap, height + 44), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * (width + gap), height - p.height))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, height + 5), FOOTER, fill=(170, 0, 0), font=font(15))
    draw.text((4, height + 26), DETAIL, fill=(90, 90, 90), font=font(11))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=90)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("core", type=Path)
    parser.add_argument("ours", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    images = [np.asarray(Image.open(p).convert("RGB")) for p in (args.input, args.core, args.ours)]
    print("wrote", write_picture(*images, out=args.out))


if __name__ == "__main__":
    main()
