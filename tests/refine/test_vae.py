"""Refiner VAE: single-file layout (full-size manifest, tiny round trip), an independent LDM reference, encode paths,
tiling, precision."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rsvl_core.kit.errors import CheckpointError
from rsvl_core.kit.tiling import plan_tiles
from rsvl_core.refine.nets.vae import (
    RefinerVAE,
    convert_first_stage,
    first_stage_to_single_file,
    infer_vae_config,
    load_refiner_vae,
    load_refiner_vae_from_diffusers,
    resolve_vae_dtype,
    sdxl_vae_config,
)
from rsvl_core.refine.tiny.vae import tiny_first_stage_single_file_state, tiny_refiner_vae, tiny_vae_config
from rsvl_core.weights.checkpoint import read_state_dict

PREFIX = "first_stage_model."


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_state():
    return tiny_first_stage_single_file_state(seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_state):
    return load_refiner_vae(tiny_state, "tiny.safetensors")


# -- layout -------------------------------------------------------------------------------------------------------


def test_vae_manifest_full_size_layout(fixtures_dir):
    manifest = json.loads((fixtures_dir / "manifests" / "first_stage_model_full.json").read_text())
    with torch.device("meta"):
        model = RefinerVAE.from_config(sdxl_vae_config())
    ours = model.single_file_state()
    missing, unexpected = sorted(set(manifest) - set(ours)), sorted(set(ours) - set(manifest))
    assert (len(missing), len(unexpected)) == (0, 0), (missing[:3], unexpected[:3])
    wrong = [k for k in manifest if list(ours[k].shape) != manifest[k]]
    assert not wrong, wrong[:3]
    assert len(manifest) == 354 and sum(k.startswith(PREFIX + "denoise_encoder.") for k in manifest) == 106

    # reverse: the manifest's keys (as meta tensors) convert onto exactly our module's keys and shapes
    meta_state = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    vae_state, denoise_state = convert_first_stage(meta_state)
    for module, state in ((model.vae, vae_state), (model.denoise_encoder, denoise_state)):
        expected = module.state_dict()
        assert set(state) == set(expected)
        assert all(state[k].shape == expected[k].shape for k in expected)
    # and the architecture inferred from the shapes is exactly the packaged config
    assert infer_vae_config(meta_state) == sdxl_vae_config()


def test_vae_tiny_round_trip_is_exact(tiny_state, tmp_path):
    path = tmp_path / "tiny_sdxl.safetensors"
    save_file(tiny_state, str(path))
    model = load_refiner_vae(read_state_dict(path, "an SDXL checkpoint"), path)
    back = model.single_file_state()
    assert set(back) == set(tiny_state)
    assert all(torch.equal(back[k], tiny_state[k]) for k in tiny_state)
    assert back[PREFIX + "decoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    assert infer_vae_config(tiny_state) == tiny_vae_config()


def test_vae_loader_reports_missing_and_unexpected_keys(tiny_state):
    broken = dict(tiny_state)
    del broken[PREFIX + "decoder.up.0.block.1.conv2.weight"]
    del broken[PREFIX + "decoder.up.0.block.1.conv2.bias"]
    with pytest.raises(CheckpointError, match=r"2 missing keys \(e\.g\. decoder\.up\.0\.block\.1\.conv2\.bias") as info:
        load_refiner_vae(broken, "broken.safetensors")
    assert "broken.safetensors" in str(info.value) and "first_stage_model VAE" in str(info.value)

    extra = dict(tiny_state)
    extra[PREFIX + "encoder.mid.attn_2.q.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(CheckpointError, match=r"1 unexpected key \(e\.g\. encoder\.mid\.attn_2\.q\.weight"):
        load_refiner_vae(extra, "extra.safetensors")

    misshapen = dict(tiny_state)
    misshapen[PREFIX + "decoder.conv_in.weight"] = torch.zeros(32, 4, 1, 1)
    with pytest.raises(CheckpointError, match=r"wrong shape \(e\.g\. decoder\.conv_in\.weight"):
        load_refiner_vae(misshapen, "misshapen.safetensors")

    with pytest.raises(CheckpointError, match="no first_stage_model"):
        load_refiner_vae({"model.diffusion_model.x": torch.zeros(1)}, "unet_only.safetensors")


def test_vae_missing_denoise_encoder_names_the_supir_checkpoint():
    sdxl_only = tiny_first_stage_single_file_state(seed=0, with_denoise_encoder=False)
    assert not any(".denoise_encoder." in k for k in sdxl_only)
    with pytest.raises(CheckpointError, match=r"denoise_encoder weights; these come from the SUPIR checkpoint"):
        load_refiner_vae(sdxl_only, "juggernautXL.safetensors")
    # not required: the documented fallback is a copy of the VAE encoder
    model = load_refiner_vae(sdxl_only, "juggernautXL.safetensors", require_denoise_encoder=False)
    image = _rand(1, 3, 32, 48)
    torch.testing.assert_close(model.encode_lq(image), model.encode(image), atol=0, rtol=0)


def test_vae_diffusers_folder(tiny, tiny_state, tmp_path):
    tiny.vae.save_pretrained(tmp_path / "sdxl" / "vae")
    model = load_refiner_vae_from_diffusers(tmp_path / "sdxl", tiny_state, denoise_path="SUPIR-v0Q.ckpt")
    image = _rand(1, 3, 32, 32)
    torch.testing.assert_close(model.encode_lq(image), tiny.encode_lq(image))
    torch.testing.assert_close(model.decode(tiny.encode(image)), tiny.decode(tiny.encode(image)))
    with pytest.raises(CheckpointError, match="SUPIR-v0Q.ckpt: has no first_stage_model.denoise_encoder"):
        load_refiner_vae_from_diffusers(tmp_path / "sdxl", {}, denoise_path="SUPIR-v0Q.ckpt")
    with pytest.raises(CheckpointError, match="vae/config.json"):
        load_refiner_vae_from_diffusers(tmp_path, None)


# -- an independent reference: the LDM VAE written with functional ops, reading the single-file keys ---------------


def _gn(x, sd, p):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def _conv(x, sd, p, padding=1, stride=1):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride=stride, padding=padding)


def _resnet(x, sd, p):
    h = _conv(F.silu(_gn(x, sd, p + ".norm1")), sd, p + ".conv1")
    h = _conv(F.silu(_gn(h, sd, p + ".norm2")), sd, p + ".conv2")
    if p + ".nin_shortcut.weight" in sd:
        x = _conv(x, sd, p + ".nin_shortcut", padding=0)
    return x + h


def _attention(x, sd, p):
    b, c, height, width = x.shape
    h = _gn(x, sd, p + ".norm")
    q, k, v = (_conv(h, sd, f"{p}.{n}", padding=0).reshape(b, c, -1) for n in "qkv")
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=2)
    h = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, height, width)
    return x + _conv(h, sd, p + ".proj_out", padding=0)


def _mid(x, sd, p):
    return _resnet(_attention(_resnet(x, sd, p + ".mid.block_1"), sd, p + ".mid.attn_1"), sd, p + ".mid.block_2")


def _reference_encode(image, sd, part):
    p = PREFIX + part
    h = _conv(image * 2 - 1, sd, p + ".conv_in")
    for i in range(4):
        h = _resnet(h, sd, f"{p}.down.{i}.block.0")
        if i < 3:
            h = _conv(F.pad(h, (0, 1, 0, 1)), sd, f"{p}.down.{i}.downsample.conv", padding=0, stride=2)
    h = _conv(F.silu(_gn(_mid(h, sd, p), sd, p + ".norm_out")), sd, p + ".conv_out")
    return _conv(h, sd, PREFIX + "quant_conv", padding=0)[:, :4] * 0.13025


def _reference_decode(latent, sd):
    p = PREFIX + "decoder"
    h = _conv(_conv(latent / 0.13025, sd, PREFIX + "post_quant_conv", padding=0), sd, p + ".conv_in")
    h = _mid(h, sd, p)
    for i in reversed(range(4)):  # LDM runs up.3 first
        for j in range(2):
            h = _resnet(h, sd, f"{p}.up.{i}.block.{j}")
        if i > 0:
            h = _conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), sd, f"{p}.up.{i}.upsample.conv")
    h = _conv(F.silu(_gn(h, sd, p + ".norm_out")), sd, p + ".conv_out")
    return ((h + 1) / 2).clamp(0, 1)


def test_vae_matches_independent_ldm_reference(tiny, tiny_state):
    image = _rand(1, 3, 40, 56, seed=1)
    torch.testing.assert_close(tiny.encode(image, tile_size=0), _reference_encode(image, tiny_state, "encoder"),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tiny.encode_lq(image, tile_size=0),
                               _reference_encode(image, tiny_state, "denoise_encoder"), atol=1e-5, rtol=1e-4)
    latent = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(2)) * 0.13
    decoded = tiny.decode(latent, tile_size=0)
    torch.testing.assert_close(decoded, _reference_decode(latent, tiny_state), atol=1e-5, rtol=1e-4)
    assert decoded.std() > 0.05  # a non-trivial output, so the comparison means something


# -- encode / decode behaviour ------------------------------------------------------------------------------------


def test_vae_shapes_are_exact_for_non_square_sizes(tiny):
    image = _rand(2, 3, 72, 136)
    for latent in (tiny.encode(image), tiny.encode_lq(image), tiny.encode(image, tile_size=48, overlap=16)):
        assert latent.shape == (2, 4, 9, 17) and latent.dtype == torch.float32
    decoded = tiny.decode(torch.randn(2, 4, 9, 17) * 0.13, tile_size=6, overlap=2)
    assert decoded.shape == (2, 3, 72, 136) and 0 <= decoded.min() and decoded.max() <= 1
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny.encode(_rand(1, 3, 70, 136))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny.encode(_rand(1, 4, 72, 136))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        tiny.decode(torch.zeros(1, 3, 9, 17))


def test_vae_encode_lq_uses_the_denoise_encoder(tiny):
    image = _rand(1, 3, 32, 48)
    assert (tiny.encode_lq(image) - tiny.encode(image)).abs().max() > 1e-3
    same = tiny_refiner_vae(seed=0)
    same.denoise_encoder.load_state_dict(same.vae.encoder.state_dict())
    torch.testing.assert_close(same.encode_lq(image), same.encode(image), atol=0, rtol=0)


def test_vae_posterior_mode_and_seeded_sample(tiny):
    image = _rand(1, 3, 32, 48)
    mode = tiny.encode(image)
    sample = tiny.encode(image, generator=torch.Generator().manual_seed(7), sample=True)
    again = tiny.encode(image, generator=torch.Generator().manual_seed(7), sample=True)
    other = tiny.encode(image, generator=torch.Generator().manual_seed(8), sample=True)
    torch.testing.assert_close(sample, again, atol=0, rtol=0)
    assert not torch.equal(sample, other) and not torch.equal(sample, mode)
    torch.testing.assert_close(mode, tiny.encode(image), atol=0, rtol=0)  # mode is deterministic


# -- tiling -------------------------------------------------------------------------------------------------------


def _edges(tiles, axis, length, scale):
    starts = {t.y0 if axis == "y" else t.x0 for t in tiles} - {0}
    ends = {t.y1 if axis == "y" else t.x1 for t in tiles} - {length}
    return sorted(e * scale for e in starts | ends)


def _border_jumps(diff, edges, dim):
    """Mean |step| of the (tiled - untiled) difference across each tile edge, and its median over all positions."""
    other = tuple(d for d in range(4) if d != diff.ndim + dim)
    jumps = diff.diff(dim=dim).abs().mean(dim=other)
    return torch.stack([jumps[e - 1] for e in edges]), jumps.median()


def _worst_seam(tiled, full, tiles, height, width):
    """Largest ratio of the difference's step across a tile edge to its median step (about 1: no seam)."""
    ratios = []
    for axis, dim, length in (("x", -1, width), ("y", -2, height)):
        at_edges, median = _border_jumps(tiled - full, _edges(tiles, axis, length, 8), dim)
        ratios.append((at_edges / median).max())
    return max(ratios)


def test_vae_tiled_decode_has_no_seams(tiny):
    latent = torch.randn(1, 4, 32, 48, generator=torch.Generator().manual_seed(0)) * 0.13
    full = tiny.decode(latent, tile_size=0)
    calls = []
    tiled = tiny.decode(latent, tile_size=24, overlap=8, callback=lambda *args: calls.append(args))
    tiles = plan_tiles(32, 48, 24, 8)
    assert tiled.shape == full.shape == (1, 3, 256, 384)
    assert [c[:3] for c in calls] == [(i + 1, len(tiles), "vae decode") for i in range(len(tiles))]
    # close to the untiled decode (GroupNorm statistics and attention are per tile, so not exact)
    assert (tiled - full).abs().mean() < 0.2 * full.std()
    # feathered: the difference is about as smooth across tile edges as anywhere else ...
    assert _worst_seam(tiled, full, tiles, 32, 48) < 2.0
    # ... and the check does see seams when they are there (no overlap: hard cuts)
    hard = tiny.decode(latent, tile_size=24, overlap=0)
    assert _worst_seam(hard, full, plan_tiles(32, 48, 24, 0), 32, 48) > 2.0


def test_vae_tiled_encode_is_close_and_reports_per_tile(tiny):
    image = _rand(1, 3, 256, 384, seed=4)
    full = tiny.encode_lq(image, tile_size=0)
    calls = []
    tiled = tiny.encode_lq(image, tile_size=128, overlap=64, callback=lambda *args: calls.append(args))
    n_tiles = len(plan_tiles(32, 48, 16, 8))
    assert tiled.shape == full.shape == (1, 4, 32, 48)
    assert len(calls) == n_tiles > 1 and calls[-1][:3] == (n_tiles, n_tiles, "vae encode")
    assert (tiled - full).abs().mean() < 0.15 * full.std()
    assert (tiled - full).abs().max() < full.abs().max()


# -- precision ----------------------------------------------------------------------------------------------------


def test_vae_precision(tiny_state):
    assert resolve_vae_dtype(torch.float16) == torch.float32
    assert resolve_vae_dtype(torch.bfloat16) == torch.bfloat16
    assert resolve_vae_dtype(torch.float32) == torch.float32
    fp16_request = load_refiner_vae(tiny_state, "tiny.safetensors", dtype=torch.float16)
    assert fp16_request.dtype == torch.float32

    bf16 = load_refiner_vae(tiny_state, "tiny.safetensors", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    image = _rand(1, 3, 32, 48)
    latent = bf16.encode_lq(image)
    decoded = bf16.decode(latent)
    assert latent.dtype == decoded.dtype == torch.float32 and torch.isfinite(decoded).all()
    fp32 = load_refiner_vae(tiny_state, "tiny.safetensors")
    assert (latent - fp32.encode_lq(image)).abs().max() < 0.1 * fp32.encode_lq(image).abs().max()


def test_vae_converters_reject_unknown_keys(tiny_state):
    with pytest.raises(ValueError, match="1 first-stage keys have no diffusers equivalent"):
        convert_first_stage({**tiny_state, PREFIX + "encoder.extra.weight": torch.zeros(1)})
    vae_state, denoise_state = convert_first_stage(tiny_state)
    with pytest.raises(ValueError, match="no single-file equivalent"):
        first_stage_to_single_file({**vae_state, "encoder.bogus.weight": torch.zeros(1)}, denoise_state)
