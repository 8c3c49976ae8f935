"""SR3's faithful 500-step loop without host synchronisation, replayed as one CUDA graph per step on CUDA.

The plain loop (`sampler.sample_sr3`) reads its schedule as Python floats and draws noise on the CPU inside
the loop: every step waits for the host. Here every per-step number lives in one device tensor (a row of
`faithful_step_table`), the noise is drawn up front in the plain loop's order (so one seed gives the same
draws), and one step is a pure tensor function (`faithful_step`: no `.item()`, no branch on tensor values).
On CUDA that step is captured once as a CUDA graph and replayed 500 times, with the row and the noise
copied into its static inputs (device-to-device copies, no sync); elsewhere the same loop runs eagerly.
The result equals the plain loop's (tests/stage1/test_graph_sampler.py).
"""

from __future__ import annotations

import torch

from ..kit.progress import ProgressCallback, report
from .model import SR3UNet
from .sampler import NoiseSource, Stage1Options
from .schedule import SR3NoiseSchedule

# Columns of a step-table row: the UNet's noise level, the x0 and posterior-mean coefficients, the noise scale.
ROW = ("noise_level", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1",
       "posterior_mean_coef2", "noise_scale")
# Noise for every step is kept on the device at once; above this many bytes the plain loop runs instead.
MAX_NOISE_BYTES = 2 * 2**30


def faithful_step_table(schedule: SR3NoiseSchedule, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, 6) float32: one row per step in loop order (t = T-1 ... 0), columns as `ROW`; the same float32
    values the plain loop uses (noise scale 0 at t = 0, where the seed adds no noise)."""
    s = schedule
    rows = []
    for t in reversed(range(s.num_timesteps)):
        scale = torch.exp(0.5 * s.posterior_log_variance_clipped[t]) if t > 0 else torch.zeros(())
        rows.append(torch.stack([torch.tensor(s.noise_level(t), dtype=torch.float32), s.sqrt_recip_alphas_cumprod[t],
                                 s.sqrt_recipm1_alphas_cumprod[t], s.posterior_mean_coef1[t],
                                 s.posterior_mean_coef2[t], scale]))
    return torch.stack(rows).to(device)


def faithful_step(unet: SR3UNet, condition: torch.Tensor, x: torch.Tensor, row: torch.Tensor, noise: torch.Tensor,
                  clip: bool = True) -> torch.Tensor:
    """One ancestral step as a pure tensor function (capturable): x_t (B, 3, H, W) float32 -> x_{t-1}.

    condition: (B, 3, H, W) in [-1, 1]; row: (6,) a step-table row; noise: (B, 3, H, W) standard normal.
    """
    param = next(unet.parameters())
    level = row[0].expand(x.shape[0], 1)
    eps = unet(torch.cat([condition, x], dim=1).to(param.dtype), level).float()
    x0 = row[1] * x - row[2] * eps
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    mean = row[3] * x0 + row[4] * x
    return mean + noise * row[5]


def graph_eligible(unet: SR3UNet, shape: tuple[int, ...], options: Stage1Options) -> bool:
    """Whether the static loop applies: the faithful sampler, no step cache, one tile at the UNet's size multiple,
    and the noise of every step small enough to keep on the device."""
    height, width = shape[-2:]
    one_tile = options.tile_size == 0 or (height <= options.tile_size and width <= options.tile_size)
    multiple = unet.config.size_multiple
    steps = options.total_steps
    noise_bytes = steps * torch.Size(shape).numel() * 4
    return (options.sampler == "faithful" and not options.cache.enabled and one_tile
            and height % multiple == 0 and width % multiple == 0 and noise_bytes <= MAX_NOISE_BYTES)


def draw_all_noise(noise_source: NoiseSource, shape: tuple[int, ...], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial sample and (steps, *shape) step noise, drawn in the plain loop's order (zeros at t = 0)."""
    x = noise_source(shape)
    noises = [noise_source(shape) for _ in range(steps - 1)]
    noises.append(torch.zeros_like(x))
    return x, torch.stack(noises)


def sample_faithful_static(unet: SR3UNet, condition: torch.Tensor, shape: tuple[int, ...],
                           schedule: SR3NoiseSchedule, options: Stage1Options, noise_source: NoiseSource,
                           callback: ProgressCallback | None = None, capture: bool | None = None) -> torch.Tensor:
    """The faithful sampler on static buffers: (B, 3, H, W) in [-1, 1], equal to `sample_sr3`'s result.

    condition: (B, 3, H, W) in [-1, 1] on the UNet's device. `capture`: replay a CUDA graph (default: on CUDA).
    Progress is reported every step without a preview (a preview would need the host).
    """
    device = condition.device
    capture = device.type == "cuda" if capture is None else capture
    steps = schedule.num_timesteps
    table = faithful_step_table(schedule, device)
    x, noises = draw_all_noise(noise_source, shape, steps)
    x, noises = x.to(device), noises.to(device)
    clip = options.clip_denoised
    with torch.inference_mode():
        if not capture:
            for i in range(steps):
                x = faithful_step(unet, condition, x, table[i], noises[i], clip)
                report(callback, i + 1, steps, "stage1")
            return x
        return _replay(unet, condition, x, table, noises, clip, callback)


def _replay(unet: SR3UNet, condition: torch.Tensor, x: torch.Tensor, table: torch.Tensor, noises: torch.Tensor,
            clip: bool, callback: ProgressCallback | None) -> torch.Tensor:
    """Capture one step as a CUDA graph on static inputs, then replay it for every row (no host sync)."""
    static_x, static_row, static_noise = x.clone(), table[0].clone(), noises[0].clone()
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm-up before capture (kernel selection, workspace allocation)
        faithful_step(unet, condition, static_x, static_row, static_noise, clip)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = faithful_step(unet, condition, static_x, static_row, static_noise, clip)
    steps = table.shape[0]
    for i in range(steps):
        static_row.copy_(table[i])
        static_noise.copy_(noises[i])
        graph.replay()
        static_x.copy_(static_out)
        report(callback, i + 1, steps, "stage1")
    return static_x.clone()
