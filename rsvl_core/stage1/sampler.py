"""Stage-1 samplers for SR3: the seed's ancestral DDPM ("faithful") and fast diffusers solvers.

SR3 is conditioned on the continuous noise level sqrt(alpha_bar_t), not on an integer timestep,
so every sampler here maps its timestep to that level before calling the UNet. All sampler
arithmetic is float32; the UNet may run in a lower precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..cache.evaluator import CachedEvaluator
from ..cache.policy import CachePolicy
from ..kit.progress import ProgressCallback, report
from ..kit.tiling import TileFit, TileGrid, pad_to_multiple, run_tiled
from .model import SR3UNet
from .schedule import SR3NoiseSchedule

SAMPLERS: tuple[str, ...] = ("faithful", "ddim", "dpmpp")
DEFAULT_FAST_STEPS = 50
MIN_TILE = 32  # the smallest stage-1 tile (output pixels): what `check` accepts, and where out-of-memory halving stops

# (x_t, noise_level) -> predicted noise, both (B, 3, H, W) float32; noise_level is sqrt(alpha_bar).
EpsModel = Callable[[torch.Tensor, float], torch.Tensor]
# shape -> standard normal noise (float32); lets tests replay the seed's exact draws.
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]


@dataclass(frozen=True)
class Stage1Options:
    """How stage 1 samples.

    Args:
        sampler: "faithful" (the seed: ancestral DDPM over a linear 1e-6 -> 1e-2 schedule, x0
            clipping), "ddim" or "dpmpp" (DPM-Solver++ 2M), both from diffusers.
        steps: faithful: length of the linear schedule (None = the seed's 500); fast solvers:
            number of solver steps (None = 50) over the same 500-step base schedule.
        clip_denoised: clamp the x0 estimate to [-1, 1] at every step (the seed does).
        tile_size: tile edge in output pixels (0 = whole image at once). 224 is the training size.
        tile_overlap: pixels shared by neighbouring tiles (blended with a raised-cosine window).
        tile_batch: tiles per UNet call.
        cache: the step cache (off by default until measured on the real model); a reused step
            reuses the previous noise prediction.
    """

    sampler: str = "faithful"
    steps: int | None = None
    clip_denoised: bool = True
    tile_size: int = 224
    tile_overlap: int = 32
    tile_batch: int = 4
    cache: CachePolicy = field(default_factory=CachePolicy)

    @property
    def total_steps(self) -> int:
        """UNet evaluations of one run: the faithful schedule length, or the solver's step count."""
        if self.sampler == "faithful":
            return self.steps or 500
        return self.steps or DEFAULT_FAST_STEPS

    def __post_init__(self) -> None:
        self.check()  # valid by construction: a bad option fails where it is made

    def check(self) -> None:
        """Raise ValueError naming the bad option, before any heavy work starts."""
        if self.cache.mode == "seed" or (self.cache.enabled and self.cache.reuse != "eps"):
            raise ValueError("stage-1 cache: use mode 'fast' with reuse 'eps' (the seed has no stage-1 cache)")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"stage-1 sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"stage-1 steps must be >= 1, got {self.steps}")
        if self.tile_size < 0 or (0 < self.tile_size < MIN_TILE):
            raise ValueError(f"stage-1 tile_size must be 0 (no tiling) or >= {MIN_TILE}, got {self.tile_size}")
        if self.tile_overlap < 0:
            raise ValueError(f"stage-1 tile_overlap must be >= 0, got {self.tile_overlap}")
        if self.tile_size and self.tile_overlap > self.tile_size // 2:
            raise ValueError(
                f"stage-1 tile_overlap {self.tile_overlap} is more than half of tile_size {self.tile_size}: "
                f"use at most {self.tile_size // 2} (or tile_size 0 = no tiling)"
            )
        if self.tile_batch < 1:
            raise ValueError(f"stage-1 tile_batch must be >= 1, got {self.tile_batch}")

# its old name (it carries the one-pass models' tiling too), still importable
SR3SamplerOptions = Stage1Options


def gaussian_noise_source(generator: torch.Generator | None, device: torch.device) -> NoiseSource:
    """Noise drawn on the CPU from `generator`, then moved: one seed gives the same noise anywhere."""

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    return draw


def stage1_tile_fit(options: Stage1Options, height: int, width: int) -> TileFit:
    """The stage-1 tile of an (height, width) output: `options`' tile, halved on out-of-memory down to MIN_TILE."""
    return TileFit(options.tile_size, options.tile_overlap, max(height, width), MIN_TILE, stage="stage 1 (SR3)")


def make_eps_model(
    unet: SR3UNet, condition: torch.Tensor, fit: TileFit | None = None, tile_batch: int = 1,
    cache: CachedEvaluator | None = None,
) -> EpsModel:
    """Bind the condition (B, 3, H, W in [-1, 1]) to the UNet, with tiling, padding and an optional step cache.

    `fit` sets the tile edge and overlap (output pixels; None = one pass) and halves the tile when the UNet
    runs out of memory: the step is then evaluated again, and later steps keep the smaller tile. With a cache,
    each call (one sampler step) first runs the start of the down path on every tile, then either returns
    the previous step's noise prediction or finishes the same evaluation.
    """
    multiple = unet.config.size_multiple
    param = next(unet.parameters())
    run = fit.run if fit is not None else (lambda call: call(0, 0))

    def prepare(tiles: torch.Tensor, noise_level: float):
        """Tiles padded to the UNet's size multiple, on its device and dtype, with their noise level."""
        padded, _ = pad_to_multiple(tiles, multiple)
        level = torch.full((padded.shape[0], 1), noise_level, dtype=torch.float32, device=param.device)
        return tiles.shape[-2:], padded.to(device=param.device, dtype=param.dtype), level

    def run_unet(tiles: torch.Tensor, noise_level: float) -> torch.Tensor:
        (h, w), sample, level = prepare(tiles, noise_level)
        return unet(sample, level)[..., :h, :w].float()

    def begin(tiles: torch.Tensor, noise_level: float, depth: int):
        (h, w), sample, level = prepare(tiles, noise_level)
        emb = unet.embed_noise_level(level.to(param.dtype))
        return (h, w), sample, emb, unet.resume_down(sample, [], emb, depth)

    def finish(state) -> torch.Tensor:
        (h, w), sample, emb, skips = state
        skips = unet.resume_down(sample, skips, emb)
        return unet.forward_up(skips[-1], skips, emb)[..., :h, :w].float()

    def tiled_eps(x_t: torch.Tensor, noise_level: float, tile_size: int, overlap: int) -> torch.Tensor:
        inputs = torch.cat([condition, x_t], dim=1)  # condition first, as the model was trained
        if cache is None or not cache.policy.enabled:
            return run_tiled(lambda t: run_unet(t, noise_level), inputs, tile_size, overlap,
                             tile_batch).to(x_t.device)
        grid = TileGrid.plan(inputs.shape[-2], inputs.shape[-1], tile_size, overlap, tile_batch)
        states = [begin(t, noise_level, cache.policy.signal_depth) for t in grid.batches(inputs)]
        return cache.step(
            states,
            signal=lambda state: state[3][-1],
            finish=lambda done: grid.blend([finish(s) for s in done]).to(x_t.device),
            remember=lambda eps: {"eps": eps},
            replay=lambda kept: kept["eps"],  # a reused step: the previous noise prediction
            layout=(tile_size, overlap),
        )

    def eps_model(x_t: torch.Tensor, noise_level: float) -> torch.Tensor:
        with torch.inference_mode():
            return run(lambda tile_size, overlap: tiled_eps(x_t, noise_level, tile_size, overlap))

    return eps_model


class FaithfulDDPM:
    """The seed's reverse step (SR3 `GaussianDiffusion.p_sample`), one method per equation."""

    def __init__(self, schedule: SR3NoiseSchedule) -> None:
        self.schedule = schedule

    def predict_x0(self, x_t: torch.Tensor, t: int, eps: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps, optionally clamped to [-1, 1]."""
        s = self.schedule
        x0 = s.sqrt_recip_alphas_cumprod[t] * x_t - s.sqrt_recipm1_alphas_cumprod[t] * eps
        return x0.clamp(-1.0, 1.0) if clip else x0

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        s = self.schedule
        return s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * x_t

    def step(
        self, x_t: torch.Tensor, t: int, eps: torch.Tensor, noise: torch.Tensor | None, clip: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step t -> t-1. Returns (x_{t-1}, x0 estimate). No noise is added at t = 0."""
        x0 = self.predict_x0(x_t, t, eps, clip)
        mean = self.posterior_mean(x0, x_t, t)
        if t == 0 or noise is None:
            return mean, x0
        return mean + noise * torch.exp(0.5 * self.schedule.posterior_log_variance_clipped[t]), x0


def _clip_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-express eps so that its implied x0 is clamped to [-1, 1] (x0 clipping for any solver)."""
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    x0 = ((x_t - s * eps) / a).clamp(-1.0, 1.0)
    return (x_t - a * x0) / s, x0


def _build_solver(name: str, schedule: SR3NoiseSchedule, steps: int):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = dict(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.double().numpy(),
        prediction_type="epsilon",
        timestep_spacing="trailing",  # start at the last (noisiest) step, as the faithful path does
    )
    if name == "ddim":
        solver = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    else:
        solver = DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
            lower_order_final=True, **common,
        )
    solver.set_timesteps(steps)
    return solver


def sample_sr3(
    eps_model: EpsModel,
    shape: tuple[int, ...],
    schedule: SR3NoiseSchedule,
    options: Stage1Options,
    noise_source: NoiseSource,
    callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise. Returns the final sample (B, 3, H, W) in [-1, 1].

    `schedule` is the faithful inference schedule (the base schedule for the fast solvers).
    `callback` gets (step, total, "stage1", x0 preview in [0, 1]) after every step and may raise
    to cancel.
    """
    x = noise_source(shape)
    if options.sampler == "faithful":
        ddpm = FaithfulDDPM(schedule)
        total = schedule.num_timesteps
        for i, t in enumerate(reversed(range(total))):
            eps = eps_model(x, schedule.noise_level(t))
            noise = noise_source(shape) if t > 0 else None
            x, x0 = ddpm.step(x, t, eps, noise, clip=options.clip_denoised)
            report(callback, i + 1, total, "stage1", (x0 + 1) / 2)
        return x

    solver = _build_solver(options.sampler, schedule, options.steps or DEFAULT_FAST_STEPS)
    total = len(solver.timesteps)
    for i, t in enumerate(solver.timesteps):
        t = int(t)
        eps = eps_model(x, schedule.noise_level(t))
        alpha_bar = float(schedule.alphas_cumprod[t])
        if options.clip_denoised:
            eps, x0 = _clip_eps(x, eps, alpha_bar)
        else:
            x0 = (x - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
        x = solver.step(eps, t, x).prev_sample
        report(callback, i + 1, total, "stage1", ((x0 + 1) / 2).clamp(0, 1))
    return x
