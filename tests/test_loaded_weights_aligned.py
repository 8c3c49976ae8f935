"""Every loader leaves each parameter in its own, 64-byte-aligned, writable memory.

Tensors read from a file are views into its buffer (safetensors hands out unaligned slices of a Python
bytes object; `torch.load(mmap=True)` maps the file). Models built on them run other kernel paths (outputs
move by ~1e-6 depending on the processor), and CUDA copies, `torch.compile` and in-place LoRA merges expect
memory of their own. `is_own_aligned` checks what PyTorch's allocator guarantees: a resizable storage
(allocated by PyTorch, not borrowed from a file) at a 64-byte boundary.
"""

from __future__ import annotations

import pytest
import torch
from rsvl_testing import tiny_llava_next_folder, tiny_seed_adapter, tiny_sr3_model

from rsvl_core.weights.checkpoint import is_own_aligned, read_state_dict


def misplaced(module: torch.nn.Module) -> list[str]:
    """Names of parameters/buffers not in own aligned memory, or sharing memory with another tensor."""
    bad, seen = [], {}
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.device.type == "meta" or not is_own_aligned(tensor):
            bad.append(name)
        key = tensor.data_ptr()
        if key in seen and seen[key] is not tensor:
            bad.append(f"{name} (shares memory with {seen[key]})")
        seen.setdefault(key, name)
    return bad


def test_a_safetensors_file_is_not_aligned_as_read_but_read_state_dict_is_aligned(tmp_path):
    """The premise: safetensors' tensors are unaligned views; ours are copies in own memory."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(3), "b": torch.randn(5, 7), "c": torch.randn(11)}, str(path))
    raw = load_file(str(path))
    assert not all(is_own_aligned(t) for t in raw.values())  # if this fails, safetensors changed: still fine
    ours = read_state_dict(path, "test weights")
    assert all(is_own_aligned(t) for t in ours.values())
    assert all(torch.equal(raw[k], ours[k]) for k in raw)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_sr3_loader_parameters_are_aligned(tmp_path, suffix):
    from rsvl_core.stage1 import load_sr3, save_sr3

    original = tiny_sr3_model(seed=3)
    path = save_sr3(original.unet, tmp_path / f"gen{suffix}", write_config=True)
    loaded = load_sr3(path)
    assert misplaced(loaded.unet) == []


@pytest.fixture(scope="module")
def refiner_files(tmp_path_factory):
    from rsvl_core.refine.tiny import write_tiny_refiner_files

    root = tmp_path_factory.mktemp("refiner")
    return write_tiny_refiner_files(root / "sdxl", root / "supir", 0)


def test_refiner_single_file_loader_parameters_are_aligned(refiner_files):
    from rsvl_core.refine.refiner import load_refiner

    refiner = load_refiner(*refiner_files)
    for part in ("unet", "control", "vae", "text"):
        assert misplaced(getattr(refiner, part)) == [], part


def test_refiner_diffusers_folder_loader_parameters_are_aligned(refiner_files, tmp_path):
    from diffusers import UNet2DConditionModel

    from rsvl_core.refine.refiner import load_refiner

    sdxl, supir = refiner_files
    source, folder = load_refiner(sdxl, supir), tmp_path / "sdxl-diffusers"
    base = UNet2DConditionModel(**source.config.to_diffusers_unet_kwargs())
    base.load_state_dict({k: v for k, v in source.unet.state_dict().items() if not k.startswith("project_modules.")})
    base.save_pretrained(folder / "unet")
    source.vae.vae.save_pretrained(folder / "vae")
    source.text.text_encoder.save_pretrained(folder / "text_encoder")
    source.text.text_encoder_2.save_pretrained(folder / "text_encoder_2")
    refiner = load_refiner(folder, supir)
    for part in ("unet", "control", "vae", "text"):
        assert misplaced(getattr(refiner, part)) == [], part


def test_captioner_and_adapter_loader_parameters_are_aligned(tmp_path):
    from rsvl_core.caption import load_captioner

    folder = tiny_llava_next_folder(tmp_path)
    adapter = tiny_seed_adapter(tmp_path / "adapter")
    captioner = load_captioner(folder, adapter)
    assert misplaced(captioner.model) == []
    merged = load_captioner(folder, adapter, merge_adapter=True)
    assert misplaced(merged.model) == []
