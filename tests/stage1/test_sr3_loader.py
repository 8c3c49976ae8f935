"""SR3 checkpoint loading: the released layout, round trips, and every kind of wrong file."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest
import torch
from rsvl_testing import tiny_sr3_config
from safetensors.torch import save_file

from rsvl_core.kit.errors import CheckpointError
from rsvl_core.stage1 import SR3Config, SR3UNet, load_sr3, save_sr3
from rsvl_core.stage1.config import SCHEDULE_BUFFER_NAMES
from rsvl_core.stage1.loader import check_sr3_keys, infer_sr3_config, split_sr3_state_dict


def manifest_state_dict(fixtures_dir):
    manifest = json.loads((fixtures_dir / "manifests" / "sr3_gen_pth.json").read_text())
    return {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}


def test_sr3_manifest_full_size_loads_with_no_missing_or_unexpected_keys(fixtures_dir, tmp_path):
    state = manifest_state_dict(fixtures_dir)
    assert len(state) == 254
    unet_state, buffers = split_sr3_state_dict(state, tmp_path / "gen.pth")
    assert sorted(buffers) == sorted(SCHEDULE_BUFFER_NAMES)
    assert {tuple(v.shape) for v in buffers.values()} == {(2000,)}  # the training schedule
    config = infer_sr3_config(unet_state, tmp_path / "gen.pth")
    # the seed's defaults: inner 64, mults 1-2-4-8-8, attention at 28 (level 3 of 224), 1 res block, 6 inputs
    assert config == SR3Config()
    assert config == SR3Config.from_seed_options(json.loads(
        (fixtures_dir / "manifests" / "summary.json").read_text())["sr3_gen_pth.json"]["unet_kwargs"])
    with torch.device("meta"):
        unet = SR3UNet(config)
    check_sr3_keys(unet, unet_state, tmp_path / "gen.pth", "test")  # raises on any mismatch
    result = unet.load_state_dict(unet_state, strict=True, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert sum(v.numel() for v in unet_state.values()) == sum(p.numel() for p in unet.parameters())


def test_sr3_manifest_mismatch_is_reported(fixtures_dir, tmp_path):
    state = manifest_state_dict(fixtures_dir)
    unet_state, _ = split_sr3_state_dict(state, tmp_path / "gen.pth")
    unet_state.pop("ups.4.attn.qkv.weight")
    unet_state["extra.weight"] = torch.empty(3, device="meta")
    with torch.device("meta"):
        unet = SR3UNet(SR3Config())
    with pytest.raises(CheckpointError, match=r"1 missing key \(e.g. ups.4.attn.qkv.weight\); 1 unexpected key"):
        check_sr3_keys(unet, unet_state, tmp_path / "gen.pth", "test")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_sr3_round_trip_in_released_layout(tmp_path, suffix):
    config = tiny_sr3_config(inner_channel=32, norm_groups=32)  # widths divisible by 32: no config needed
    torch.manual_seed(1)
    unet = SR3UNet(config)
    path = save_sr3(unet, tmp_path / f"I100_E10_gen{suffix}")
    raw = torch.load(path, weights_only=True) if suffix != ".safetensors" else None
    if raw is not None:
        assert all(k.startswith("denoise_fn.") or k in SCHEDULE_BUFFER_NAMES for k in raw)
        assert raw["betas"].shape == (2000,)
    model = load_sr3(path)
    assert model.config == config
    assert model.stored_schedule_length == 2000
    # the stored training buffers are ignored: inference uses the seed's 500-step schedule
    assert model.inference_schedule().num_timesteps == 500
    for key, value in unet.state_dict().items():
        torch.testing.assert_close(model.unet.state_dict()[key], value, atol=0, rtol=0)
    assert not model.unet.training


def test_sr3_config_beside_weights_is_used(tmp_path):
    config = tiny_sr3_config()  # norm_groups 8 cannot be inferred from shapes
    path = save_sr3(SR3UNet(config), tmp_path / "tiny_gen.safetensors", write_config=True)
    assert load_sr3(path).config == config
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="cannot infer norm_groups.*tiny_gen.json"):
        load_sr3(path)


def test_sr3_seed_config_layout_and_val_schedule(tmp_path):
    config = tiny_sr3_config()
    path = save_sr3(SR3UNet(config), tmp_path / "model" / "I5_E1_gen.pth")
    text = """{
    // the SR3 code base's configs carry comment lines like this one
    "model": {
        "unet": {"in_channel": 6, "out_channel": 3, "inner_channel": 16, "norm_groups": 8,
                 "channel_multiplier": [1, 2], "attn_res": [16], "res_blocks": 1, "dropout": 0.2},
        "beta_schedule": {"val": {"schedule": "linear", "n_timestep": 100, "linear_start": 1e-6,
                                  "linear_end": 1e-2}},
        "diffusion": {"image_size": 32}
    }
}"""
    (path.parent / "sr_sr3.json").write_text(text)
    model = load_sr3(path)
    assert model.config.attention_levels == (1,) and model.config.norm_groups == 8
    assert model.inference_schedule().num_timesteps == 100


def test_sr3_bare_and_data_parallel_state_dicts(tmp_path):
    config = tiny_sr3_config(inner_channel=32, norm_groups=32)
    unet = SR3UNet(config)
    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in unet.state_dict().items()}, bare)
    assert load_sr3(bare).config == config
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"denoise_fn.{k}": v for k, v in unet.state_dict().items()}, "epoch": 3}, wrapped)
    assert load_sr3(wrapped).config == config


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def one_line_error(path, match):
    with pytest.raises(CheckpointError) as info:
        load_sr3(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert "SR3" in message, message  # says what was expected
    assert match in message, message
    return message


def test_sr3_wrong_file_sdxl_checkpoint(tmp_path):
    path = tmp_path / "juggernautXL.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}, str(path))
    one_line_error(path, "looks like an SDXL/SUPIR")


def test_sr3_wrong_file_truncated(tmp_path):
    good = save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), tmp_path / "gen.pth")
    data = good.read_bytes()
    for suffix, blob in ((".pth", data), (".safetensors", None)):
        path = tmp_path / f"cut{suffix}"
        if blob is None:
            full = save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), tmp_path / "g.safetensors")
            blob = full.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
        one_line_error(path, "truncated or corrupt")


def test_sr3_wrong_file_pickle_that_runs_code(tmp_path, capsys):
    path = tmp_path / "evil_gen.pth"
    torch.save({"denoise_fn.downs.0.weight": torch.zeros(1), "payload": _Exploit()}, path)
    message = one_line_error(path, "never executes pickled code")
    assert "this must never run" not in capsys.readouterr().out
    assert "refused" in message
    raw = tmp_path / "raw.pkl.pth"  # a plain (non-zip) pickle
    raw.write_bytes(pickle.dumps(_Exploit()))
    one_line_error(raw, "")
    assert "this must never run" not in capsys.readouterr().out


def test_sr3_wrong_file_empty_and_missing_and_folder(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    one_line_error(empty, "empty (0 bytes)")
    one_line_error(tmp_path / "nope.safetensors", "file not found")
    folder = tmp_path / "dir.pth"
    folder.mkdir()
    one_line_error(folder, "is a folder")


def test_sr3_wrong_file_training_state_and_garbage(tmp_path):
    opt = tmp_path / "I100_E10_opt.pth"
    torch.save({"epoch": 10, "iter": 100, "scheduler": None, "optimizer": {"state": {}, "param_groups": []}}, opt)
    one_line_error(opt, "contains no tensors (top-level keys: epoch, iter, optimizer, scheduler)")
    garbage = tmp_path / "noise.ckpt"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all" * 10)
    one_line_error(garbage, "not a readable PyTorch file")
    zipped = tmp_path / "other.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", "hello")
    one_line_error(zipped, "not a readable PyTorch file")
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    one_line_error(text, "unsupported file type '.txt'")


def test_sr3_wrong_architecture_for_config(tmp_path):
    path = save_sr3(SR3UNet(tiny_sr3_config()), tmp_path / "gen.safetensors")
    with pytest.raises(CheckpointError, match="do not match the architecture from the given config"):
        load_sr3(path, config=tiny_sr3_config(channel_mults=(1, 2, 2)))


def test_sr3_load_dtype(tmp_path):
    path = save_sr3(SR3UNet(tiny_sr3_config()), tmp_path / "gen.safetensors", write_config=True)
    model = load_sr3(path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"


@pytest.mark.parametrize(
    "overrides",
    [
        dict(channel_mults=(1, 2, 4), attention_levels=(1, 2), res_blocks=2),
        dict(channel_mults=(1, 1, 2, 2), attention_levels=(), res_blocks=1),
        dict(channel_mults=(2, 3), attention_levels=(0,), res_blocks=3, in_channel=9, out_channel=4),
    ],
)
def test_sr3_architecture_is_inferred_from_shapes(tmp_path, overrides):
    # spandrel-style: varied random architectures -> released layout -> our loader -> same config and outputs
    config = tiny_sr3_config(inner_channel=32, norm_groups=32, **overrides)
    torch.manual_seed(0)
    unet = SR3UNet(config).eval()
    model = load_sr3(save_sr3(unet, tmp_path / "gen.safetensors"))
    assert model.config == config
    loaded = model.unet.state_dict()
    assert loaded.keys() == unet.state_dict().keys()
    for name, tensor in unet.state_dict().items():  # the weights must be bit-identical
        assert torch.equal(loaded[name], tensor), name
    sample = torch.randn(1, config.in_channel, 16, 24)
    level = torch.tensor([[0.7]])
    with torch.no_grad():
        # Outputs of two modules with the same weights in different memory: fp32 on the same device may take
        # other kernel paths (vector widths, alignment) and differ by a few ulps; 1e-6 absolute bounds that.
        torch.testing.assert_close(model.unet(sample, level), unet(sample, level), atol=1e-6, rtol=0)
