"""The SR3 noise schedule (DDPM betas and every derived array), computed as the seed computes it.

All arrays are computed in float64 (numpy) and stored as float32 tensors, exactly like the SR3
code base's `set_new_noise_schedule`, so the faithful sampler reproduces the seed's numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# The seed's inference schedule ("val" in configs/sr_sr3.json); training used 2000 steps.
SEED_INFERENCE_SCHEDULE = {"schedule": "linear", "n_timestep": 500, "linear_start": 1e-6, "linear_end": 1e-2}


def make_betas(schedule: str, n_timestep: int, linear_start: float, linear_end: float) -> np.ndarray:
    """Beta schedule in float64. `linear` is `linspace(start, end, n)`; `quad` is linear in sqrt."""
    if n_timestep < 1:
        raise ValueError(f"noise schedule n_timestep must be >= 1, got {n_timestep}")
    if schedule == "linear":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    if schedule == "quad":
        return np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2
    if schedule == "cosine":  # Nichol & Dhariwal 2021, offset s = 8e-3, betas capped at 0.999
        s = 8e-3
        t = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + s
        f = np.cos(t / (1 + s) * math.pi / 2) ** 2
        f = f / f[0]
        return np.minimum(1 - f[1:] / f[:-1], 0.999)
    raise ValueError(f"unknown SR3 beta schedule {schedule!r}; expected 'linear', 'quad' or 'cosine'")


@dataclass(frozen=True)
class SR3NoiseSchedule:
    """DDPM schedule arrays, each (T,) float32, plus `sqrt_alphas_cumprod_prev` (T+1,) in float64.

    `sqrt_alphas_cumprod_prev[t + 1]` = sqrt(alpha_bar_t) is the noise level the UNet is given at
    step t (float32 of the float64 value, as the seed does).
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    sqrt_alphas_cumprod_prev: torch.Tensor  # float64, length T + 1

    @classmethod
    def create(
        cls,
        schedule: str = "linear",
        n_timestep: int = 500,
        linear_start: float = 1e-6,
        linear_end: float = 1e-2,
    ) -> SR3NoiseSchedule:
        betas = make_betas(schedule, n_timestep, linear_start, linear_end)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.tensor(a, dtype=torch.float32)

        return cls(
            betas=f32(betas),
            alphas_cumprod=f32(ac),
            alphas_cumprod_prev=f32(ac_prev),
            sqrt_alphas_cumprod=f32(np.sqrt(ac)),
            sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
            log_one_minus_alphas_cumprod=f32(np.log(1.0 - ac)),
            sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / ac)),
            sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / ac - 1)),
            posterior_variance=f32(post_var),
            posterior_log_variance_clipped=f32(np.log(np.maximum(post_var, 1e-20))),
            posterior_mean_coef1=f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
            posterior_mean_coef2=f32((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
            sqrt_alphas_cumprod_prev=torch.tensor(np.sqrt(np.append(1.0, ac)), dtype=torch.float64),
        )

    @classmethod
    def from_options(cls, options: dict) -> SR3NoiseSchedule:
        """From the SR3 code base's `beta_schedule` block (`schedule`, `n_timestep`, `linear_*`)."""
        return cls.create(
            schedule=options.get("schedule", "linear"),
            n_timestep=int(options.get("n_timestep", 500)),
            linear_start=float(options.get("linear_start", 1e-6)),
            linear_end=float(options.get("linear_end", 1e-2)),
        )

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def noise_level(self, t: int) -> float:
        """sqrt(alpha_bar_t) as the float32 value the seed feeds the UNet at step t."""
        return float(self.sqrt_alphas_cumprod_prev[t + 1].to(torch.float32))
