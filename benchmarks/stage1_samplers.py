"""Stage-1 sampler cost, side by side in one run: faithful (the seed's) vs the fast solvers.

Prints a table: UNet evaluations, wall time, speed-up vs faithful, peak GPU memory. Random
weights: this measures cost only, not quality (quality needs the real checkpoint).

    python benchmarks/stage1_samplers.py                 # CPU, tiny SR3, 64x64 output
    python benchmarks/stage1_samplers.py --full          # CUDA, full-size SR3 (66.8 M), 224x224 output
"""

from __future__ import annotations

import argparse
import time

import torch

from rsvl_core.stage1 import SR3Config, SR3Model, SR3UNet, Stage1Options, upscale_stage1

RUNS = [("faithful", None), ("ddim", 50), ("dpmpp", 50), ("dpmpp", 20)]


class CountingUNet(torch.nn.Module):
    def __init__(self, unet: SR3UNet) -> None:
        super().__init__()
        self.inner, self.config, self.calls = unet, unet.config, 0

    def forward(self, sample: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(sample, noise_level)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size SR3 at 224x224 (needs CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.full:
        config, lr_size, scale = SR3Config(), 28, 8
    else:
        config = SR3Config(inner_channel=16, channel_mults=(1, 2, 2), attention_levels=(2,), norm_groups=8)
        lr_size, scale = 16, 4
    torch.manual_seed(0)
    unet = CountingUNet(SR3UNet(config).eval()).to(args.device, dtype)
    model = SR3Model(unet=unet)  # type: ignore[arg-type]
    image = torch.rand(1, 3, lr_size, lr_size)
    cuda = torch.device(args.device).type == "cuda"

    rows = []
    for sampler, steps in RUNS:
        options = Stage1Options(sampler=sampler, steps=steps, tile_size=0)
        upscale_stage1(model, image, scale, Stage1Options(sampler="ddim", steps=2, tile_size=0))  # warm-up
        unet.calls = 0
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        upscale_stage1(model, image, scale, options, seed=0)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else "n/a"
        rows.append((f"{sampler} ({steps or 500} steps)", unet.calls, seconds, peak))

    base = rows[0][2]
    size = lr_size * scale
    print(f"stage 1, {'full' if args.full else 'tiny'} SR3, {size}x{size} output, {args.device}, {args.dtype}")
    print(f"{'sampler':<24}{'UNet calls':>12}{'time (s)':>12}{'speed-up':>10}{'peak mem':>12}")
    for name, calls, seconds, peak in rows:
        print(f"{name:<24}{calls:>12}{seconds:>12.3f}{base / seconds:>9.1f}x{peak:>12}")


if __name__ == "__main__":
    main()
