"""Test helpers: where the reference fixtures are, and tiny models built in code (importable by tests)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("RSVL_FIXTURES", REPO.parent / "shared" / "fixtures"))
SAMPLE_IMAGE = REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png"


def tiny_sr3_config(**overrides):
    """A small SR3 architecture that runs in milliseconds on a CPU."""
    from rsvl_core.stage1 import SR3Config

    options = dict(inner_channel=16, channel_mults=(1, 2), attention_levels=(1,), res_blocks=1,
                   norm_groups=8, dropout=0.0)
    options.update(overrides)
    return SR3Config(**options)


def tiny_sr3_model(seed: int = 0, **overrides):
    from rsvl_core.stage1 import SR3Model, SR3UNet

    torch.manual_seed(seed)
    return SR3Model(unet=SR3UNet(tiny_sr3_config(**overrides)).eval())


class _Config:
    size_multiple = 1
    out_channel = 3


class OracleDenoiser(nn.Module):
    """Predicts the exact noise for a known clean image: x0 = target_fn(condition).

    With it every correct sampler must end at x0, which checks the noise-level bookkeeping.
    `target_fn` sees only the pixels it is given (a tile, when tiled), like a real network.
    """

    def __init__(self, target_fn) -> None:
        super().__init__()
        self.config = _Config()
        self.target_fn = target_fn
        self.calls = 0
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device and dtype

    def forward(self, sample: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        condition, x_t = sample[:, :3], sample[:, 3:]
        x0 = self.target_fn(condition)
        a = noise_level.view(-1, 1, 1, 1).to(x_t.dtype)
        return (x_t - a * x0) / (1 - a**2).sqrt()


def zero_padded_blur(image: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Box blur with zero padding: darkens the edges of whatever window it sees (a seam source)."""
    k = 2 * radius + 1
    kernel = torch.full((image.shape[1], 1, k, k), 1.0 / k**2, dtype=image.dtype)
    return torch.nn.functional.conv2d(image, kernel, padding=radius, groups=image.shape[1])


def tiny_llava_next_folder(tmp_path: Path, seed: int = 0) -> Path:
    """A tiny random LLaVA-NeXT (Llama 2x32, CLIP 16px/patch 4) + processor saved in Hugging Face layout."""
    from rsvl_core.caption.tiny import write_tiny_llava_next

    return write_tiny_llava_next(Path(tmp_path) / "llava", seed=seed)


def tiny_seed_adapter(folder: Path, **options) -> Path:
    """A tiny LoRA adapter in the seed's ORIGINAL LLaVA-NeXT naming (adapter_config.json + safetensors)."""
    from rsvl_core.caption.tiny import write_tiny_seed_adapter

    return write_tiny_seed_adapter(folder, **options)


# Original LLaVA-NeXT module name -> transformers 5.x name, written out by hand (independent of the loader's table).
def hand_mapped_name(original: str) -> str:
    """The transformers module name for an original LLaVA-NeXT one, by explicit string rules."""
    if original == "lm_head":
        return "lm_head"
    if original == "model.mm_projector.0":
        return "model.multi_modal_projector.linear_1"
    if original == "model.mm_projector.2":
        return "model.multi_modal_projector.linear_2"
    vision = "model.vision_tower.vision_tower.vision_model."
    if original.startswith(vision):
        return "model.vision_tower." + original[len(vision):]
    if original.startswith("model."):
        return "model.language_model." + original[len("model."):]
    raise KeyError(original)


def tiny_llava_inputs(processor, seed: int = 0, size: tuple[int, int] = (24, 30)) -> dict:
    """Processor inputs (input_ids, pixel_values, image_sizes, ...) for one random image and the seed's prompt."""
    from rsvl_core.caption import CaptionOptions, to_pil_images
    from rsvl_core.caption.captioner import prompt_messages

    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    text = processor.apply_chat_template(prompt_messages(CaptionOptions().prompt), add_generation_prompt=True,
                                         tokenize=False)
    return dict(processor(images=to_pil_images(image)[0], text=text, return_tensors="pt"))


@torch.no_grad()
def llava_logits(model, inputs: dict) -> torch.Tensor:
    """Next-token logits for every position: (1, L, vocab) float32."""
    return model(**inputs).logits.float()


def supir_tiny_parts(fixtures_dir: Path):
    """The seed's tiny SUPIR (fixtures/supir_tiny) loaded through our loader with its SGM config."""
    import json

    from safetensors.torch import load_file

    from rsvl_core.refine.loading.loader import load_unet_and_control
    from rsvl_core.refine.nets.config import RefinerConfig

    folder = fixtures_dir / "supir_tiny"
    params = json.loads((folder / "config.json").read_text())
    config = RefinerConfig.from_sgm_params(params["network_config.params"], zero_sft_hidden=params["zerosft_nhidden"])
    state = load_file(folder / "weights.safetensors")
    return load_unet_and_control(state, folder / "weights.safetensors", config=config)


# spandrel stage-1 models: tiny networks of real architectures, state dicts in their release layouts
def spandrel_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A network's weights as plain, contiguous tensors (ready for save_file / torch.save)."""
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def tiny_esrgan() -> dict[str, torch.Tensor]:
    """ESRGAN x4 (1 RRDB, 8 features) in the original ESRGAN `model.N` layout, output centred on 0.5."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    state = spandrel_state(ESRGAN(num_filters=8, num_blocks=1, scale=4))
    state["model.10.bias"].fill_(0.5)  # random init would clamp a third of the pixels to 0
    return state


def tiny_compact(scale: int = 4, channels: int = 3, num_conv: int = 2) -> dict[str, torch.Tensor]:
    """Real-ESRGAN Compact (SRVGGNetCompact): receptive field num_conv + 2 input pixels each side."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(1)
    net = Compact(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_conv=num_conv, upscale=scale)
    return spandrel_state(net)


def crop_geotiff(source: Path, target: Path, width: int, height: int) -> Path:
    """The top-left width x height pixels of `source`, georeferenced (same CRS and origin, nodata kept)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        window = Window(0, 0, width, height)  # top-left: the scene's own transform still applies
        profile = {**src.profile, "width": width, "height": height, "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return target


def assert_records_close(a, b, tolerances: dict[str, float], where: str = "record", key: str = "") -> None:
    """Two run records (nested dicts/lists from JSON) that crossed a process, a thread count or a window split:
    the same keys and the same non-float values; a float within `tolerances[key]` (absolute, by its key's name),
    else within 1e-6 relative (what float32 sums in another order give)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys differ: {sorted(a)} != {sorted(b)}"
        for name in a:
            assert_records_close(a[name], b[name], tolerances, f"{where}.{name}", name)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_records_close(x, y, tolerances, f"{where}[{k}]", key)
    elif isinstance(a, float) or isinstance(b, float):
        allowed = tolerances.get(key, 1e-6 * max(1.0, abs(a), abs(b)))
        assert abs(a - b) <= allowed, f"{where}: {a} and {b} differ by {abs(a - b):.3g} (allowed {allowed:.3g})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
