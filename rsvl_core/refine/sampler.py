"""Restore EDM sampler (SUPIR): Euler steps over SDXL's discrete sigmas with churn, linear CFG and
restoration guidance toward a centre latent.

Written in the scheduler style: the schedule (`discrete_sigmas`, `sampling_sigmas`), the
preconditioning (`EpsDenoiser`), the guidance rules (`cfg_scale_at`, `control_scale_at`,
`restoration_factor`) and one `euler_step`, with the loop in `sample_restore_edm`. Every number
follows the seed (`sgm/modules/diffusionmodules/sampling.py`, `discretizer.py`, `guiders.py`,
`denoiser.py`), verified against `fixtures/sampler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..kit.progress import ProgressCallback, report

# The seed hard-codes this (RestoreEDMSampler.sigma_max and LinearCFG); it is slightly below the
# real first sigma 14.614641, so the linear rules start a hair outside their range.
SEED_SIGMA_MAX = 14.6146
NUM_TRAIN_TIMESTEPS = 1000

# Given (x scaled by c_in, discrete timestep indices, control_scale) for the CFG batch [uncond; cond]
# (2B latents), return epsilon for that batch.
EpsFunction = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class RestoreSamplerOptions:
    """Settings of one refinement run (defaults: the `paper` preset, the seed's infer.py)."""

    steps: int = 50                      # Euler steps (the seed's edm_steps)
    s_churn: float = 5.0                 # EDM churn: gamma = min(s_churn / steps, sqrt(2) - 1)
    s_noise: float = 1.003               # scale of the churn noise
    s_tmin: float = 0.0                  # churn only for s_tmin <= sigma <= s_tmax
    s_tmax: float = math.inf
    cfg_scale: float = 7.5               # CFG scale at sigma -> 0
    cfg_scale_start: float = 4.0         # CFG scale at the highest sigma (linear_cfg only)
    linear_cfg: bool = True              # interpolate the CFG scale linearly in sigma
    restoration_scale: float = -1.0      # exponent of the pull toward x_center; <= 0 turns it off
    restoration_sigma_min: float = 0.05  # no restoration once the next sigma is at or below this
    control_scale: float = 1.0           # strength of the control injection (0 = plain SDXL)
    linear_control_scale: bool = False   # interpolate the control scale linearly in sigma
    control_scale_start: float = 0.0     # control scale at the highest sigma (linear_control_scale only)
    recentre_each_step: bool = True      # the seed: x_center <- current latent after every step
    extras: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.check()  # valid by construction: a bad option fails where it is made

    def check(self) -> None:
        """Raise ValueError naming the bad setting before any work starts."""
        if not 1 <= self.steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {self.steps}")
        if self.s_churn < 0:
            raise ValueError(f"s_churn must be >= 0, got {self.s_churn}")
        if self.s_noise <= 0:
            raise ValueError(f"s_noise must be > 0, got {self.s_noise}")
        if self.cfg_scale < 0 or self.cfg_scale_start < 0:
            raise ValueError(f"CFG scales must be >= 0, got {self.cfg_scale} and {self.cfg_scale_start}")
        if not 0 <= self.control_scale <= 2 or not 0 <= self.control_scale_start <= 2:
            raise ValueError(f"control scales must be in [0, 2], got {self.control_scale} / {self.control_scale_start}")


# 1. schedule ---------------------------------------------------------------------------------------
def sdxl_alphas_cumprod() -> np.ndarray:
    """SDXL's 1000-step "scaled linear" schedule, float64 as the seed computes it."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas, axis=0)


def _sigmas_from(alphas_cumprod: np.ndarray) -> torch.Tensor:
    # the seed: torch.tensor((1 - a) / a, dtype=float32) ** 0.5
    return torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5


def discrete_sigmas() -> torch.Tensor:
    """The 1000 sigmas the denoiser quantises to, ascending (float32)."""
    return _sigmas_from(sdxl_alphas_cumprod())


def sampling_timesteps(steps: int) -> np.ndarray:
    """DDPM indices the sampler visits, ascending (LegacyDDPMDiscretization)."""
    return np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, steps, endpoint=False).astype(int)[::-1].copy()


def sampling_sigmas(steps: int) -> torch.Tensor:
    """(steps + 1,) sigmas as iterated: descending, then a trailing 0."""
    sigmas = _sigmas_from(sdxl_alphas_cumprod()[sampling_timesteps(steps)]).flip(0)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# 2. preconditioning --------------------------------------------------------------------------------
class EpsDenoiser:
    """Discrete epsilon-prediction denoiser: D(x, sigma) = x - sigma_q * eps(x * c_in(sigma_q), k).

    sigma is quantised to the nearest of the 1000 training sigmas (index k, sigma_q), as the seed's
    DiscreteDenoiser does; the network is conditioned on the integer index k.
    """

    def __init__(self) -> None:
        self.sigmas = discrete_sigmas()

    def quantize(self, sigma: float) -> tuple[int, float]:
        index = int((self.sigmas - sigma).abs().argmin())
        return index, float(self.sigmas[index])

    @staticmethod
    def c_in(sigma: float) -> float:
        return 1.0 / math.sqrt(sigma**2 + 1.0)

    def network_inputs(self, x: torch.Tensor, sigma_hat: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The CFG batch [x; x] scaled by c_in(sigma_q), its timestep indices, and sigma_q."""
        index, sigma_q = self.quantize(sigma_hat)
        batch = torch.cat([x, x])
        c_in = torch.tensor(self.c_in(sigma_q), dtype=torch.float32)
        timesteps = torch.full((batch.shape[0],), index, dtype=torch.long, device=x.device)
        return batch * c_in.to(x.device), timesteps, sigma_q

    @staticmethod
    def guide(eps: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """CFG in epsilon: eps_u + scale * (eps_c - eps_u) for the batch [uncond; cond]."""
        uncond, cond = eps.float().chunk(2)
        return uncond + (cond - uncond) * cfg_scale

    @staticmethod
    def denoised(x: torch.Tensor, eps: torch.Tensor, sigma_q: float, cfg_scale: float) -> torch.Tensor:
        """Guided D = D_u + scale * (D_c - D_u) with D = x - sigma_q * eps, in the seed's order of operations."""
        batch = torch.cat([x, x])
        denoised = batch + eps.float() * torch.tensor(-sigma_q, dtype=torch.float32, device=x.device)
        uncond, cond = denoised.chunk(2)
        return uncond + (cond - uncond) * cfg_scale

    def guided(self, eps_fn: EpsFunction, x: torch.Tensor, sigma_hat: float, cfg_scale: float,
               control_scale: float) -> torch.Tensor:
        """Guided D(x) with CFG: one network call on the batch [uncond; cond] -> (B, C, h, w)."""
        batch, timesteps, sigma_q = self.network_inputs(x, sigma_hat)
        return self.denoised(x, eps_fn(batch, timesteps, control_scale), sigma_q, cfg_scale)


# 3. guidance rules ---------------------------------------------------------------------------------
def cfg_scale_at(sigma_hat: float, options: RestoreSamplerOptions) -> float:
    """LinearCFG: cfg_scale_start at sigma_max, cfg_scale at 0 (constant without linear_cfg)."""
    if not options.linear_cfg:
        return options.cfg_scale
    sigma = torch.tensor(sigma_hat, dtype=torch.float32)
    return float((options.cfg_scale_start - options.cfg_scale) * sigma / SEED_SIGMA_MAX + options.cfg_scale)


def control_scale_at(sigma: float, options: RestoreSamplerOptions) -> float:
    """Linear control scale: control_scale_start at sigma_max, control_scale at 0 (evaluated at sigma_i)."""
    if not options.linear_control_scale:
        return options.control_scale
    return (sigma / SEED_SIGMA_MAX) * (options.control_scale_start - options.control_scale) + options.control_scale


def churn_gamma(sigma: float, steps: int, options: RestoreSamplerOptions) -> float:
    if options.s_tmin <= sigma <= options.s_tmax:
        return min(options.s_churn / steps, 2**0.5 - 1)
    return 0.0


def restoration_factor(sigma: float, next_sigma: float, options: RestoreSamplerOptions) -> float:
    """Weight of the pull toward x_center at this step; 0 when restoration is off."""
    if options.restoration_scale <= 0 or next_sigma <= options.restoration_sigma_min:
        return 0.0
    return float((torch.tensor(sigma, dtype=torch.float32) / SEED_SIGMA_MAX) ** options.restoration_scale)


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma_hat: float, next_sigma: float) -> torch.Tensor:
    d = (x - denoised) / sigma_hat
    return x + d * (next_sigma - sigma_hat)


# 4. the loop ---------------------------------------------------------------------------------------
@dataclass
class StepRecord:
    """What the sampler did at one step (for logs and tests; the cache's decisions are in its own report)."""

    sigma: float
    next_sigma: float
    sigma_hat: float
    cfg_scale: float
    control_scale: float


Denoise = Callable[[torch.Tensor, float, float, float, int], torch.Tensor]


def sample_restore_edm(
    denoise: Denoise,
    noise: torch.Tensor,
    x_center: torch.Tensor,
    options: RestoreSamplerOptions,
    churn_noise: Callable[[tuple[int, ...]], torch.Tensor],
    callback: ProgressCallback | None = None,
    trajectory: list[torch.Tensor] | None = None,
    records: list[StepRecord] | None = None,
) -> torch.Tensor:
    """Run the restore EDM sampler from pure noise.

    Args:
        denoise: (x, sigma_hat, cfg_scale, control_scale, step) -> guided D(x), (B, 4, h, w) float32.
        noise: (B, 4, h, w) standard normal; scaled here by sqrt(1 + sigma_0^2).
        x_center: (B, 4, h, w) latent restoration guidance pulls toward at step 0 (the stage-1 latent).
        churn_noise: draws standard normal noise of a shape (called only on steps with churn).
        trajectory: if given, the latent after each step is appended (for tests).
    Returns:
        the final latent (B, 4, h, w) float32.
    """
    sigmas = sampling_sigmas(options.steps).tolist()
    x = noise.float() * math.sqrt(1.0 + sigmas[0] ** 2)
    x_center = x_center.float()
    for i in range(options.steps):
        sigma, next_sigma = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(sigma, len(sigmas) - 1, options)
        sigma_hat = float(torch.tensor(sigma, dtype=torch.float32) * (gamma + 1.0))
        if gamma > 0:
            eps = churn_noise(tuple(x.shape)).to(x.device) * options.s_noise
            x = x + eps * (torch.tensor(sigma_hat**2 - sigma**2, dtype=torch.float32)) ** 0.5
        cfg = cfg_scale_at(sigma_hat, options)
        control = control_scale_at(sigma, options)
        denoised = denoise(x, sigma_hat, cfg, control, i)
        factor = restoration_factor(sigma, next_sigma, options)
        if factor > 0:
            denoised = denoised - (denoised - x_center) * factor
        x = euler_step(x, denoised, sigma_hat, next_sigma)
        if options.recentre_each_step:
            x_center = x
        if trajectory is not None:
            trajectory.append(x.clone())
        if records is not None:
            records.append(StepRecord(sigma, next_sigma, sigma_hat, cfg, control))
        report(callback, i + 1, options.steps, "refine", denoised)
    return x
