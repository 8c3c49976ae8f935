"""read_state_dict(prefixes=...): only the named parts of a file (the SDXL text encoders without the UNet)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from rsvl_core.weights.checkpoint import read_state_dict


def test_native_read_only_prefixed_tensors(tmp_path):
    path = tmp_path / "parts.safetensors"
    save_file({"conditioner.a": torch.ones(2), "model.diffusion_model.b": torch.zeros(3),
               "conditioner.c": torch.full((1,), 5.0)}, str(path))
    state = read_state_dict(path, "a test file", prefixes=("conditioner.",))
    assert sorted(state) == ["conditioner.a", "conditioner.c"] and float(state["conditioner.c"]) == 5.0
    pickled = tmp_path / "parts.pth"
    torch.save({"conditioner.a": torch.ones(2), "other": torch.zeros(1)}, pickled)
    assert list(read_state_dict(pickled, "a test file", prefixes=("conditioner.",))) == ["conditioner.a"]
