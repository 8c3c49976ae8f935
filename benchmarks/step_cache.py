"""Step-cache benchmark: the seed without cache, the seed's cache as the seed runs it, and ours.

Prints one table measured in one run, side by side:

  (a) seed, no cache          every step: control net + full UNet
  (b) seed cache, seed cost   the seed's decisions and the seed's evaluation pattern: every step runs
                              the control net and the UNet encoder; a computed step runs the control
                              net a second time and the rest of the UNet (DFBCache "input_stage1/2")
  (c) seed rule, our cost     the same decisions, but the control net runs once per computed step
                              and never on a reused one
  (d) fast (ours)             the `fast` cache preset (`rsvl_core.cache.PRESETS`)

Columns: UNet evaluations (full), encoder-only passes, control-net evaluations, FLOPs (torch's
FlopCounterMode), wall time, peak CUDA memory, speedup vs (a), and the drift of the final image
vs (a): relative L2 and, when the `lpips` package and its weights are installed, LPIPS.

CPU (default): a tiny random refiner (SDXL-shaped), 50 steps at a 32x32 latent, plus the tiny SR3.
`--full` (CUDA): full-size random-weight SDXL + SUPIR at 1024x1024 (latent 128x128) and the full SR3
at 224x224 (sized to finish in a few minutes on one H100). Random weights: the ratios of work and
time are real; the drift numbers only say how far the cache moves a random model's output.

    python benchmarks/step_cache.py [--full] [--steps 50] [--device cuda] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from rsvl_core.cache import PRESETS, CachePolicy
from rsvl_core.refine import sampler as S
from rsvl_core.refine.denoise import GuidedDenoiser
from rsvl_core.refine.nets.cfg import ConditionedNetworks, Conditioning, EncoderState


class SeedCostNetworks(ConditionedNetworks):
    """The seed's evaluation pattern: the control net also runs before every cache decision (its
    ControlWrapper computes it before the UNet's input_stage1) and again on computed steps."""

    def signal(self, x_in, timesteps, depth=0, lq_latent=None) -> EncoderState:
        with torch.inference_mode():
            self.control_features(x_in, timesteps, lq_latent)  # computed and discarded, as in the seed
        return super().signal(x_in, timesteps, depth, lq_latent)


@dataclass
class Result:
    name: str
    latent: torch.Tensor
    image: torch.Tensor | None
    unet: int
    encoder: int
    control: int
    flops: float
    seconds: float
    peak_mb: float | None
    reused: list[int]


def build_refiner_parts(full: bool, device: torch.device, dtype: torch.dtype):
    from rsvl_core.refine.nets.config import RefinerConfig
    from rsvl_core.refine.nets.control import GLVControl
    from rsvl_core.refine.nets.unet import RefinerUNet
    from rsvl_core.refine.nets.vae import RefinerVAE, sdxl_vae_config
    from rsvl_core.refine.tiny import tiny_refiner_config

    torch.manual_seed(0)
    config = RefinerConfig.sdxl() if full else tiny_refiner_config()
    with torch.device(device):
        unet, control = RefinerUNet(config), GLVControl(config)
    if full:
        vae = RefinerVAE.from_config(sdxl_vae_config())
    else:
        from rsvl_core.refine.tiny.vae import tiny_refiner_vae

        vae = tiny_refiner_vae(0)
    unet, control = unet.to(dtype).eval(), control.to(dtype).eval()
    vae = vae.to(device=device, dtype=torch.float32 if dtype == torch.float16 else dtype).eval()
    return config, unet, control, vae


def run_refiner(name, parts, policy, steps, latent_size, device, seed_cost=False) -> Result:
    config, unet, control, vae = parts
    generator = torch.Generator().manual_seed(0)
    shape = (1, 4, latent_size, latent_size)
    lq = torch.randn(shape, generator=generator).to(device)
    context = torch.randn(1, 154, config.context_dim, generator=generator).to(device) * 0.5
    vector = torch.randn(1, config.adm_in_channels, generator=generator).to(device) * 0.5
    noise = torch.randn(shape, generator=generator).to(device)
    churn = torch.Generator().manual_seed(1)
    cls = SeedCostNetworks if seed_cost else ConditionedNetworks
    networks = cls(unet, control, Conditioning(context, vector), Conditioning(context * 0.9, vector * 0.9), lq)
    denoise = GuidedDenoiser(networks, steps, cache=policy)
    options = S.RestoreSamplerOptions(steps=steps)  # the paper preset: churn 5, CFG 4 -> 7.5
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with counter:
        latent = S.sample_restore_edm(denoise, noise, lq, options,
                                      lambda s: torch.randn(s, generator=churn).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    with torch.inference_mode():
        image = vae.decode(latent, tile_size=0)
    return Result(name, latent.float().cpu(), image.float().cpu(), networks.unet_calls, networks.signal_calls,
                  networks.control_calls, counter.get_total_flops(), seconds, peak, denoise.cache.report.reused_steps)


def lpips_fn():
    try:
        import lpips  # optional; needs its weights locally
        model = lpips.LPIPS(net="alex", verbose=False)
    except Exception:  # noqa: BLE001 - any failure means: no LPIPS column
        return None
    return lambda a, b: float(model(a * 2 - 1, b * 2 - 1).mean())


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def print_table(title: str, results: list[Result], lpips=None) -> None:
    base = results[0]
    print(f"\n{title}")
    header = (f"{'configuration':<26} {'UNet':>5} {'enc':>5} {'ctrl':>5} {'GFLOP':>9} {'time s':>8} {'peak MB':>8} "
              f"{'speedup':>8} {'rel L2 img':>10} {'LPIPS':>6}  reused steps")
    print(header)
    print("-" * len(header))
    for r in results:
        drift = relative_l2(r.image, base.image) if r.image is not None else float("nan")
        lp = lpips(r.image, base.image) if lpips and r.image is not None else None
        peak = f"{r.peak_mb:8.0f}" if r.peak_mb is not None else f"{'-':>8}"
        lp_text = f"{lp:6.3f}" if lp is not None else f"{'n/a':>6}"
        reused = ",".join(map(str, r.reused)) if r.reused else "-"
        print(f"{r.name:<26} {r.unet:>5} {r.encoder:>5} {r.control:>5} {r.flops / 1e9:>9.1f} {r.seconds:>8.2f} "
              f"{peak} {base.seconds / r.seconds:>7.2f}x {drift:>10.4f} {lp_text}  {reused}")


def full_size_step_parts(latent: int = 128) -> dict[str, float]:
    """TFLOP of one refiner step's parts at full size (CFG batch 2), counted on the meta device (no weights, no GPU):
    control net, UNet encoder, its first block, middle + decoder."""
    from rsvl_core.refine.nets.config import RefinerConfig
    from rsvl_core.refine.nets.control import GLVControl
    from rsvl_core.refine.nets.unet import RefinerUNet

    config = RefinerConfig.sdxl()
    with torch.device("meta"):
        unet, control = RefinerUNet(config), GLVControl(config)
        x, t = torch.randn(2, 4, latent, latent), torch.tensor([500, 500])
        context, vector = torch.randn(2, 154, 2048), torch.randn(2, 2816)

    def tflops(fn):
        counter = FlopCounterMode(display=False)
        with counter:
            out = fn()
        return counter.get_total_flops() / 1e12, out

    with torch.device("meta"):
        emb = unet.embed(t, vector)
        f_control, features = tflops(lambda: control(x, x, t, context, vector))
        f_encoder, skips = tflops(lambda: unet.forward_encoder_partial(x, emb, context, 0))
        f_first, _ = tflops(lambda: unet.forward_encoder_partial(x, emb, context, 1))
        f_decoder, _ = tflops(lambda: unet.forward_decoder(skips[-1], skips, emb, context, features, 1.0))
    return {"control": f_control, "encoder": f_encoder, "first_block": f_first, "decoder": f_decoder}


def full_size_step_costs(latent: int = 128) -> None:
    """Print the full-size step's parts and what a reused / computed step costs under each cache."""
    parts = full_size_step_parts(latent)
    f_control, f_encoder, f_first, f_decoder = (parts[k] for k in ("control", "encoder", "first_block", "decoder"))
    total = f_control + f_encoder + f_decoder
    print(f"\nFull-size SDXL + SUPIR, one step (CFG batch 2, latent {latent}x{latent} = {latent * 8} px), "
          f"counted on the meta device: {total:.2f} TFLOP")
    print(f"  control net {f_control / total:.1%}, UNet encoder {f_encoder / total:.1%} (first block "
          f"{f_first / total:.2%}), middle + decoder {f_decoder / total:.1%}")
    print("  cost of a reused / a computed step, in no-cache steps:")
    print(f"    seed's cache as the seed runs it  {(f_control + f_encoder) / total:.2f} / "
          f"{(2 * f_control + f_encoder + f_decoder) / total:.2f}")
    print(f"    seed's decisions, our evaluation  {f_encoder / total:.2f} / 1.00")
    print(f"    fast (first-block signal)         {f_first / total:.3f} / 1.00")


def run_stage1(full: bool, device: torch.device, dtype: torch.dtype) -> None:
    from rsvl_core.pipeline.tiny import TINY_SR3_CONFIG
    from rsvl_core.stage1 import SR3Config, SR3UNet, Stage1Options, upscale_stage1
    from rsvl_core.stage1.loader import SR3Model

    torch.manual_seed(0)
    config = SR3Config() if full else TINY_SR3_CONFIG
    model = SR3Model(SR3UNet(config).to(device=device, dtype=dtype).eval())
    size = 28 if full else 16
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    fast = replace(PRESETS["fast"], threshold=0.05)
    for name, sampler, steps, cache in (("faithful 500, no cache", "faithful", None, CachePolicy()),
                                        ("faithful 500, fast cache", "faithful", None, fast),
                                        ("dpmpp 20, no cache", "dpmpp", 20, CachePolicy())):
        options = Stage1Options(sampler=sampler, steps=steps, tile_size=0, cache=cache)
        from rsvl_core.cache import CacheReport

        report = CacheReport()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = upscale_stage1(model, image, 8, options, seed=0, cache_report=report)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append((name, time.perf_counter() - start, out.float().cpu(), len(report.reused_steps)))
    print(f"\nStage 1 (SR3 {'full size' if full else 'tiny'}, {size * 8}x{size * 8} output, {device.type})")
    print(f"{'configuration':<26} {'time s':>8} {'speedup':>8} {'reused':>7} {'rel L2 vs first':>15}")
    for name, seconds, out, reused in rows:
        print(f"{name:<26} {seconds:>8.2f} {rows[0][1] / seconds:>7.2f}x {reused:>7} "
              f"{relative_l2(out, rows[0][2]):>15.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="full-size SDXL+SUPIR and SR3 (CUDA)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None)
    parser.add_argument("--skip-stage1", action="store_true")
    parser.add_argument("--latent", type=int, default=None,
                        help="latent edge of the refiner run (default 32 tiny, 128 full)")
    parser.add_argument("--skip-full-count", action="store_true",
                        help="leave out the full-size FLOP count on the meta device")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    latent = args.latent or (128 if args.full else 32)
    torch.set_grad_enabled(False)
    parts = build_refiner_parts(args.full, device, dtype)
    configs = [
        ("(a) seed, no cache", CachePolicy(), False),
        ("(b) seed cache, seed cost", CachePolicy.seed(0.3), True),
        ("(c) seed rule, our cost", CachePolicy.seed(0.3), False),
        ("(d) fast (ours)", PRESETS["fast"], False),
    ]
    run_refiner("warm-up", parts, CachePolicy(), 2, latent, device)
    results = [run_refiner(name, parts, policy, args.steps, latent, device, seed_cost)
               for name, policy, seed_cost in configs]
    size = "SDXL+SUPIR full size" if args.full else "tiny SDXL-shaped refiner"
    print_table(f"Refiner ({size}, random weights, {args.steps} steps, latent {latent}x{latent}, "
                f"{device.type}, {str(dtype).split('.')[-1]})", results, lpips_fn())
    if not args.skip_full_count:
        full_size_step_costs()
    if not args.skip_stage1:
        run_stage1(args.full, device, dtype)


if __name__ == "__main__":
    main()
