"""Load (and write) SR3 generator checkpoints in the SR3 code base's `*_gen.pth` layout.

Layout: UNet parameters under `denoise_fn.` plus the 12 noise-schedule buffers of the *training*
schedule (length 2000 in the released model). The buffers are recognised and ignored: inference
recomputes its own schedule. Architecture comes from a config beside the weights when there is
one, otherwise it is inferred from tensor shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..kit.atomic import atomic_path
from ..kit.errors import CheckpointError
from ..weights.checkpoint import check_state, read_json_config, read_state_dict, reading_headers, strip_prefix
from ..weights.families import refuse_family
from .config import SCHEDULE_BUFFER_NAMES, SR3Config
from .model import SR3UNet
from .schedule import SEED_INFERENCE_SCHEDULE, SR3NoiseSchedule

UNET_PREFIX = "denoise_fn."
EXPECTED = "an SR3 generator checkpoint (*_gen.pth layout: denoise_fn.* UNet weights)"
# The seed's training schedule: what a released gen.pth carries in its buffers.
SEED_TRAINING_SCHEDULE = {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6, "linear_end": 1e-2}
# A bare SR3 UNet (no GaussianDiffusion wrapper) is told by its first and last convolutions.
BARE_UNET_KEYS = ("downs.0.weight", "final_conv.block.3.weight")


@dataclass
class SR3Model:
    """A loaded SR3 UNet and what is needed to sample from it.

    Attributes:
        unet: the noise predictor, in eval mode.
        schedule_options: the faithful inference schedule (the seed's linear 1e-6 -> 1e-2 over
            500 steps unless a config beside the weights says otherwise).
        path: the file it came from (None when built in memory).
        stored_schedule_length: length of the training-schedule buffers found in the file
            (reported, never used).
    """

    unet: SR3UNet
    schedule_options: dict[str, Any] = field(default_factory=lambda: dict(SEED_INFERENCE_SCHEDULE))
    path: Path | None = None
    stored_schedule_length: int | None = None

    @property
    def config(self) -> SR3Config:
        return self.unet.config

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def inference_schedule(self, steps: int | None = None) -> SR3NoiseSchedule:
        """The faithful schedule; `steps` replaces its length (same start/end betas)."""
        options = dict(self.schedule_options)
        if steps is not None:
            options["n_timestep"] = steps
        return SR3NoiseSchedule.from_options(options)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SR3Model:
        self.unet.to(device=device, dtype=dtype)
        return self


def is_sr3_state(state: dict[str, Any]) -> bool:
    """SR3's keys: the GaussianDiffusion wrapper's `denoise_fn.*`, or a bare SR3 UNet (possibly DataParallel)."""
    if any(k.startswith(UNET_PREFIX) for k in state):
        return True
    bare = {k.removeprefix("module.") for k in state}
    return all(k in bare for k in BARE_UNET_KEYS)


def split_sr3_state_dict(
    state: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (UNet weights without prefix, stored schedule buffers). Refuses other model families."""
    unet_state = strip_prefix(state, UNET_PREFIX)
    if not unet_state:
        if not is_sr3_state(state):
            refuse_family(state, path, "SR3", EXPECTED)
            sample = ", ".join(sorted(state)[:3])
            raise CheckpointError(path, f"no SR3 UNet keys found (first keys: {sample})", EXPECTED)
        # A bare UNet state dict (no GaussianDiffusion wrapper), possibly from DataParallel.
        bare = {k.removeprefix("module."): v for k, v in state.items()}
        unet_state = {k: v for k, v in bare.items() if k not in SCHEDULE_BUFFER_NAMES}
    buffers = {k: v for k, v in state.items() if k in SCHEDULE_BUFFER_NAMES}
    return unet_state, buffers


def infer_sr3_config(unet_state: dict[str, torch.Tensor], path: Path) -> SR3Config:
    """Read the architecture off the tensor shapes (norm_groups: 32, the seed's, when it fits)."""
    try:
        first = unet_state["downs.0.weight"]
        out_channel = unet_state["final_conv.block.3.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(path, f"missing SR3 key {exc.args[0]!r}", EXPECTED) from None
    inner, in_channel = first.shape[0], first.shape[1]
    indices = sorted({int(m.group(1)) for k in unet_state if (m := re.match(r"downs\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]  # widths of the res blocks of each level
    attention_levels: set[int] = set()
    for i in indices[1:]:
        if f"downs.{i}.conv.weight" in unet_state:
            levels.append([])
            continue
        width_key = f"downs.{i}.res_block.block1.block.3.weight"
        if width_key not in unet_state:
            raise CheckpointError(path, f"unrecognised SR3 down block downs.{i}", EXPECTED)
        levels[-1].append(unet_state[width_key].shape[0])
        if f"downs.{i}.attn.qkv.weight" in unet_state:
            attention_levels.add(len(levels) - 1)
    counts = {len(widths) for widths in levels}
    if len(counts) != 1 or 0 in counts or any(len(set(w)) != 1 for w in levels):
        raise CheckpointError(path, f"irregular SR3 down path (block widths per level: {levels})", EXPECTED)
    widths = [w[0] for w in levels]
    if any(w % inner for w in widths):
        raise CheckpointError(path, f"level widths {widths} are not multiples of {inner}", EXPECTED)
    groups = 32
    if any(w % groups for w in [inner, *widths]):
        raise CheckpointError(
            path,
            f"cannot infer norm_groups for widths {[inner, *widths]} (the default 32 does not divide them); "
            f"put a config JSON beside the weights ({path.with_suffix('.json').name}) with the model's "
            "`norm_groups`",
            EXPECTED,
        )
    return SR3Config(
        in_channel=in_channel,
        out_channel=out_channel,
        inner_channel=inner,
        channel_mults=tuple(w // inner for w in widths),
        attention_levels=tuple(sorted(attention_levels)),
        res_blocks=counts.pop(),
        norm_groups=groups,
        dropout=0.0,
    )


def parse_sr3_config(data: dict[str, Any]) -> tuple[SR3Config, dict[str, Any] | None] | None:
    """(architecture, inference schedule or None) from a known config layout, or None if unknown.

    Known layouts: ours (`{"sr3": {...}, "inference_schedule": {...}}`), the SR3 code base's
    (`{"model": {"unet": {...}, "beta_schedule": {"val": {...}}}}`), and the seed UNet's
    constructor kwargs (`{"unet_constructor_kwargs": {...}}`).
    """
    if isinstance(data.get("sr3"), dict):
        return SR3Config.from_dict(data["sr3"]), data.get("inference_schedule")
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("unet"), dict):
        unet = dict(model["unet"])
        unet.setdefault("image_size", model.get("diffusion", {}).get("image_size", 224))
        val = model.get("beta_schedule", {}).get("val")
        return SR3Config.from_seed_options(unet), val
    if isinstance(data.get("unet_constructor_kwargs"), dict):
        return SR3Config.from_seed_options(data["unet_constructor_kwargs"]), None
    return None


def find_config_beside(path: Path) -> tuple[Path, tuple[SR3Config, dict[str, Any] | None]] | None:
    """A config next to the weights: `<name>.json`, else `config.json` or `sr_sr3.json` if it is an SR3 one."""
    own = path.with_suffix(".json")
    if own.is_file():
        parsed = parse_sr3_config(read_json_config(own, "an SR3 config JSON", comment_lines=True))
        if parsed is None:
            raise CheckpointError(
                own, "unrecognised config layout", "an SR3 config JSON with a 'sr3' or 'model.unet' block"
            )
        return own, parsed
    for name in ("config.json", "sr_sr3.json"):
        candidate = path.parent / name
        if candidate.is_file():
            parsed = parse_sr3_config(read_json_config(candidate, "an SR3 config JSON", comment_lines=True))
            if parsed is not None:
                return candidate, parsed
    return None


def check_sr3_keys(unet: SR3UNet, unet_state: dict[str, torch.Tensor], path: Path, source: str) -> None:
    """Raise a CheckpointError unless the weights match the model key-for-key and shape-for-shape."""
    check_state(unet.state_dict(), unet_state, (path, EXPECTED), f"weights do not match the architecture from {source}")


def load_sr3(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: SR3Config | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> SR3Model:
    """Load an SR3 generator checkpoint (`.safetensors`, or `.pth`/`.ckpt` via weights_only).

    Args:
        path: the weights file.
        device, dtype: where and in which precision the UNet runs.
        config: the architecture; default: a config JSON beside the file, else inferred from shapes.
        state: the file's tensors when the caller has read them already (`read_state_dict`).
    Raises:
        CheckpointError: unreadable, unsafe or wrong file, or weights that do not fit the architecture.
    """
    path = Path(path)
    state = read_state_dict(path, EXPECTED) if state is None else state
    unet_state, buffers = split_sr3_state_dict(state, path)
    schedule_options = dict(SEED_INFERENCE_SCHEDULE)
    if config is not None:
        source = "the given config"
    elif (found := find_config_beside(path)) is not None:
        config_path, (config, val_schedule) = found
        source = f"config {config_path.name}"
        if val_schedule:
            schedule_options.update(val_schedule)
    else:
        config = infer_sr3_config(unet_state, path)
        source = "shapes inferred from the file"
    with torch.device("meta"):
        unet = SR3UNet(config)
    check_sr3_keys(unet, unet_state, path, source)
    unet.load_state_dict(unet_state, strict=True, assign=True)
    unet.eval().requires_grad_(False).to(device="meta" if reading_headers() else device, dtype=dtype)
    lengths = {int(v.shape[0]) for v in buffers.values()}
    return SR3Model(
        unet=unet,
        schedule_options=schedule_options,
        path=path,
        stored_schedule_length=lengths.pop() if len(lengths) == 1 else None,
    )


def save_sr3(
    unet: SR3UNet,
    path: str | Path,
    training_schedule: dict[str, Any] | None = None,
    write_config: bool = False,
) -> Path:
    """Write `unet` in the released `*_gen.pth` layout (prefix + training-schedule buffers), atomically.

    `.safetensors` or `.pth` by suffix. With `write_config`, also writes `<name>.json` beside it.
    """
    path = Path(path)
    schedule = SR3NoiseSchedule.from_options(training_schedule or SEED_TRAINING_SCHEDULE)
    state = {UNET_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in unet.state_dict().items()}
    for name in SCHEDULE_BUFFER_NAMES:
        state[name] = getattr(schedule, name).clone()
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    if write_config:
        unet.config.to_json_file(path.with_suffix(".json"))
    return path
