"""Full-size SDXL + SUPIR key layout: our modules against the seed's manifests (built on meta, no weights)."""

from __future__ import annotations

import json

import pytest
import torch

from rsvl_core.refine.loading.ldm_keys import ldm_to_ours, ours_to_ldm
from rsvl_core.refine.loading.loader import CONTROL_PREFIX, UNET_PREFIX, infer_refiner_config
from rsvl_core.refine.nets.config import RefinerConfig
from rsvl_core.refine.nets.control import GLVControl
from rsvl_core.refine.nets.unet import RefinerUNet


@pytest.fixture(scope="module")
def full_size():
    config = RefinerConfig.sdxl()
    with torch.device("meta"):
        return config, RefinerUNet(config), GLVControl(config)


def _manifest(fixtures_dir, name: str, prefix: str) -> dict[str, list[int]]:
    data = json.loads((fixtures_dir / "manifests" / name).read_text())
    assert all(k.startswith(prefix) for k in data)
    return {k[len(prefix):]: v for k, v in data.items()}


def _shapes(state: dict) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


def test_unet_manifest_full_size_keys_and_shapes(fixtures_dir, full_size):
    config, unet, _ = full_size
    manifest = _manifest(fixtures_dir, "lightglvunet_full.json", UNET_PREFIX)
    assert len(manifest) == 1798
    ours = _shapes(ours_to_ldm(unet.state_dict(), config))
    assert sorted(set(manifest) - set(ours)) == []      # missing
    assert sorted(set(ours) - set(manifest)) == []      # unexpected
    assert ours == manifest                             # every shape
    # and the other direction: the manifest's names all map onto our modules
    renamed, unknown = ldm_to_ours({k: torch.empty(0) for k in manifest}, config)
    assert unknown == [] and set(renamed) == set(unet.state_dict())


def test_unet_manifest_supir_specific_keys_are_the_connectors(fixtures_dir, full_size):
    _, unet, _ = full_size
    specific = json.loads((fixtures_dir / "manifests" / "lightglvunet_supir_specific_keys.json").read_text())
    keys = specific if isinstance(specific, list) else list(specific)
    ours = {UNET_PREFIX + k for k in unet.state_dict() if k.startswith("project_modules.")}
    assert set(keys) == ours and len(ours) == 118
    params = sum(v.numel() for k, v in unet.state_dict().items() if k.startswith("project_modules."))
    assert abs(params - 54.8e6) < 0.05e6


def test_control_manifest_full_size_keys_and_shapes(fixtures_dir, full_size):
    config, _, control = full_size
    manifest = _manifest(fixtures_dir, "glvcontrol_full.json", CONTROL_PREFIX)
    assert len(manifest) == 810
    ours = _shapes(ours_to_ldm(control.state_dict(), config, decoder=False, hint=True))
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    assert ours == manifest
    params = sum(v.numel() for v in control.state_dict().values())
    assert abs(params - 1.243e9) < 0.001e9


def test_manifest_config_is_inferred_from_shapes(fixtures_dir):
    manifest = _manifest(fixtures_dir, "lightglvunet_full.json", UNET_PREFIX)
    state = {k: torch.empty(v, device="meta") for k, v in manifest.items()}
    assert infer_refiner_config(state) == RefinerConfig.sdxl()
