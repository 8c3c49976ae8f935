"""Tiny random-weight models of every stage, written in the real file formats and the real models layout.

What `rsvl demo` runs on, and what tests and benchmarks load through the real loaders: an SR3 `gen.pth`, a
LLaVA-NeXT folder with a seed-style LoRA adapter, an SDXL single file and a SUPIR checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..caption.tiny import write_tiny_llava_next, write_tiny_seed_adapter
from ..refine.tiny import write_tiny_refiner_files
from ..stage1 import SR3Config, SR3UNet, save_sr3
from ..weights.catalogue import WEIGHTS

# Small enough for a CPU, shaped like the real one: widths divisible by 32 (so no config file is
# needed, as with the released gen.pth) and attention at 1/8 resolution.
TINY_SR3_CONFIG = SR3Config(
    inner_channel=32, channel_mults=(1, 1, 2, 2), attention_levels=(3,), res_blocks=1, norm_groups=32, dropout=0.0
)


def write_tiny_models(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write tiny random models into `models_dir` in the layout `rsvl upscale --models-dir` reads."""
    folder = {item: Path(models_dir) / entry.subdir for item, entry in WEIGHTS.items()}  # the weights table's
    torch.manual_seed(seed)
    sr3_path = save_sr3(SR3UNet(TINY_SR3_CONFIG), folder["sr3"] / "rsvl_demo_sr3_gen.pth")
    llava = write_tiny_llava_next(folder["captioner"], seed=seed)
    adapter = write_tiny_seed_adapter(folder["caption-adapter"], seed=seed + 1)
    sdxl, supir = write_tiny_refiner_files(folder["sdxl"], folder["supir"], seed)
    return {"sr3": sr3_path, "captioner": llava, "caption adapter": adapter, "SDXL": sdxl, "SUPIR": supir}
