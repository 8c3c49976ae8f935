"""One engine under every face: one weights table and one lookup (rsvl weights, rsvl upscale's job API, rsvl caption),
and stage 1 as a registry (SR3 beside spandrel's architectures; other model families refused by one rule)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch
from rsvl_testing import tiny_esrgan, tiny_sr3_config
from safetensors.torch import save_file

from rsvl_core.cli import main
from rsvl_core.cli.weights import add_weights_parser, run_weights
from rsvl_core.jobs.inputs import locate_model_files
from rsvl_core.kit.errors import CheckpointError, RsvlError
from rsvl_core.pipeline import RunConfig
from rsvl_core.stage1 import SpandrelStage1, SR3Stage1, SR3UNet, load_sr3, load_stage1, save_sr3
from rsvl_core.weights.catalogue import WEIGHTS, WeightsEntry, find_weights

SAMPLE = Path(__file__).parents[1] / "rsvl_core" / "samples" / "osbs_029_lr100.png"


def _touch(path, data: bytes = b"weights"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _model_folder(path, marker: str):
    _touch(path / marker, b"{}")
    return path


class _Recorder:
    """Stands in for the captioner loader: records which folders `rsvl caption` was given."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, folder, adapter, **kwargs):
        self.calls.append((folder, adapter))
        return self

    def caption(self, image, options, progress=None):
        return ["fields and a road"]

    def modules(self) -> dict:
        return {}


def _caption_paths(monkeypatch, *argv: str):
    import rsvl_core.pipeline.components

    recorder = _Recorder()
    monkeypatch.setattr(rsvl_core.pipeline.components, "load_captioner", recorder)  # what `rsvl caption` calls
    assert main(["caption", str(SAMPLE), "-q", *argv]) == 0
    return recorder.calls[-1]


def test_engine_caption_finds_models_where_upscale_does(clean, tmp_path, monkeypatch, capsys):
    # A ComfyUI install laid out as the nodes list it (a model folder per choice under models/rsvl/<subdir>/),
    # with the refiner files in ComfyUI's shared checkpoints/; the seed's LoRA only in ./CKPT_PTH/Llava-next.
    comfy = tmp_path / "ComfyUI"
    _touch(comfy / "models" / "rsvl" / "sr3" / "I1_E1_gen.pth")
    llava = _model_folder(comfy / "models" / "rsvl" / "llava" / "llama3-llava-next-8b-hf", "config.json")
    _touch(comfy / "models" / "checkpoints" / "juggernautXL_v8Rundiffusion.safetensors")
    _touch(comfy / "models" / "checkpoints" / "SUPIR-v0Q.ckpt")
    adapter = _model_folder(clean / "CKPT_PTH" / "Llava-next", "adapter_config.json")
    monkeypatch.setenv("COMFYUI_DIR", str(comfy))

    files = locate_model_files(RunConfig(scale=2))  # what `rsvl upscale` / `rsvl batch` / `rsvl eval` use
    assert (files.captioner, files.adapter) == (llava, adapter)
    assert _caption_paths(monkeypatch) == (llava, adapter)
    err = capsys.readouterr().err
    assert f"captioner: using {llava} (ComfyUI ($COMFYUI_DIR))" in err
    assert f"caption-adapter: using {adapter} (seed CKPT_PTH)" in err

    # a CKPT_PTH named with --ckpt-pth, and a models folder named with --models-dir: the same answer for both
    release = tmp_path / "release"
    named = _model_folder(release / "CKPT_PTH" / "Llava-next", "adapter_config.json")
    models = tmp_path / "models"
    own = _model_folder(models / "llava", "config.json")
    files = locate_model_files(RunConfig(scale=2), models, ckpt_dir=release)
    assert (files.captioner, files.adapter) == (own, named)
    assert _caption_paths(monkeypatch, "--models-dir", str(models), "--ckpt-pth", str(release)) == (own, named)
    assert _caption_paths(monkeypatch, "--models-dir", str(models), "--no-adapter") == (own, None)


def test_engine_caption_and_upscale_refuse_the_same_way_naming_place_and_fix(clean, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _touch(empty / "sr3" / "I1_E1_gen.pth")
    assert main(["caption", str(SAMPLE), "--models-dir", str(empty), "-q"]) == 2
    caption_err = capsys.readouterr().err.strip()
    with pytest.raises(RsvlError) as upscale_err:
        locate_model_files(RunConfig(scale=2), empty)
    fix = f"rsvl weights download captioner --models-dir {empty}"
    for text in (caption_err, str(upscale_err.value)):
        assert f"captioner weights not found: nothing usable in {empty / 'llava'} (no such folder)" in text
        assert fix in text and "--llava PATH" in text and "\n" not in text
    assert "--caption TEXT" in str(upscale_err.value)  # a run can also go without the captioner


def rsvl_weights(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rsvl")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    return run_weights(parser.parse_args(["weights", *argv]))


def test_engine_one_table_drives_rsvl_weights_list(clean, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    _touch(models / "stage1" / "x_gen.pth")
    # change one entry's folder and add an entry: `rsvl weights list` follows the table, nothing else
    monkeypatch.setitem(WEIGHTS, "sr3", dataclasses.replace(WEIGHTS["sr3"], subdir="stage1"))
    extra = WeightsEntry("vae-fix", "refine", "a test-only VAE", "nothing (test)", False, "one *.safetensors",
                         what="test VAE", put="a VAE", subdir="vae_fix", flag="--vae-fix", comfy_folder="vae",
                         manual="copy it to <models>/vae_fix/")
    monkeypatch.setitem(WEIGHTS, "vae-fix", extra)
    _touch(models / "vae_fix" / "fix.safetensors")
    assert rsvl_weights("list", "--models-dir", str(models)) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in out[1:1 + len(WEIGHTS)]]
    assert rows == ["sr3", "captioner", "caption-adapter", "sdxl", "supir", "vae-fix"]
    table = dict(zip(rows, out[1:1 + len(WEIGHTS)], strict=True))
    assert "found" in table["sr3"] and f"{models / 'stage1' / 'x_gen.pth'}  [--models-dir]" in table["sr3"]
    assert "nothing (test)" in table["vae-fix"] and f"{models / 'vae_fix' / 'fix.safetensors'}" in table["vae-fix"]
    assert "MISSING" in table["captioner"]
    # the entry's flag is an explicit path of `rsvl weights list` too
    other = _touch(tmp_path / "elsewhere.safetensors")
    assert rsvl_weights("list", "--models-dir", str(models), "--vae-fix", str(other)) == 0
    assert f"{other}  [--vae-fix]" in capsys.readouterr().out
    # and the job API reads the same table
    assert locate_model_files(RunConfig(scale=2, refine=None), models).stage1 == models / "stage1" / "x_gen.pth"


def test_engine_lookup_error_names_what_where_and_the_command(clean, tmp_path):
    found = find_weights("supir", models_dir=tmp_path / "m")
    assert found.status == "missing" and [look.label for look in found.looked][:2] == ["--models-dir", "./models"]
    message = found.error()
    assert message.startswith(f"refiner SUPIR weights not found: nothing usable in {tmp_path / 'm' / 'supir'} "
                              "(no such folder) nor in the 5 other places `rsvl weights list` names.")
    assert "--supir PATH" in message and "--stage1-only" in message
    assert message.endswith(f"to download it: rsvl weights download supir --models-dir {tmp_path / 'm'}")
    seed_only = find_weights("sr3", models_dir=tmp_path / "m").error()
    assert "to get it: rsvl weights download sr3 (prints the steps)" in seed_only and "_gen.pth" in seed_only


# ------------------------------------------------------------------------------------------ stage 1 registry


FOREIGN = {
    "sdxl": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
              "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)},
             "an SDXL/SUPIR (LDM single-file) checkpoint"),
    "supir": ({"model.control_model.input_hint_block.0.weight": torch.zeros(2, 4, 3, 3)},
              "a SUPIR control-model checkpoint"),
    "llava": ({"language_model.model.embed_tokens.weight": torch.zeros(8, 4)}, "a vision-language (LLaVA) checkpoint"),
    "lora": ({"base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(2, 4)}, "a PEFT LoRA adapter"),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_engine_stage1_refuses_sdxl_supir_llava_files_by_one_rule(tmp_path, name):
    from rsvl_core.stage1.spandrel_sr import load_spandrel_stage1

    state, description = FOREIGN[name]
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    for load, role in ((load_stage1, "a stage-1 model"), (load_spandrel_stage1, "a stage-1 model"),
                       (load_sr3, "SR3")):
        with pytest.raises(CheckpointError) as error:
            load(path)
        message = str(error.value)
        assert message.startswith(f"{path}: this looks like {description}, not {role} (expected ")
        assert "\n" not in message


def test_engine_a_new_family_in_the_one_table_is_refused_by_every_stage1_loader(tmp_path, monkeypatch):
    import rsvl_core.weights.families as families
    from rsvl_core.stage1.spandrel_sr import load_spandrel_stage1

    new = families.ModelFamily("flux", "a FLUX checkpoint", "double_blocks.")
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, new))
    path = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(path))
    for load in (load_stage1, load_spandrel_stage1, load_sr3):
        with pytest.raises(CheckpointError, match="this looks like a FLUX checkpoint, not"):
            load(path)


def test_engine_stage1_registry_is_ours_detected_first_then_spandrels(tmp_path):
    import spandrel
    from rsvl_testing import tiny_compact

    from rsvl_core.stage1.compact import CompactDescriptor
    from rsvl_core.stage1.registry import OWN_ARCHITECTURES, SR3_ID, load_architecture

    assert [arch.id for arch in OWN_ARCHITECTURES] == [SR3_ID, "Compact"]
    assert SR3_ID not in spandrel.MAIN_REGISTRY  # spandrel's own registry (ComfyUI's) is left alone
    # SR3 in the released *_gen.pth layout: one registry load, state-dict compatible, key for key and bit for bit
    torch.manual_seed(0)
    unet = SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32))
    path = save_sr3(unet, tmp_path / "I9_E9_gen.pth")
    state = torch.load(path, weights_only=True)
    loaded = load_architecture(state, path)
    assert loaded.config == unet.config and loaded.stored_schedule_length == 2000
    ours, theirs = loaded.unet.state_dict(), unet.state_dict()
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # Compact is built by rsvl; the same call loads any architecture spandrel knows
    compact = load_architecture(tiny_compact(), tmp_path / "c.pth")
    assert isinstance(compact, CompactDescriptor) and compact.architecture.name == "RealESRGAN Compact"
    descriptor = load_architecture(tiny_esrgan(), tmp_path / "e.pth")
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 4


def test_engine_load_stage1_is_one_load_for_sr3_and_spandrel_files(tmp_path):
    torch.manual_seed(1)
    sr3 = save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), tmp_path / "a_gen.safetensors")
    esrgan = tmp_path / "4x_esrgan.pth"
    torch.save({"params_ema": tiny_esrgan()}, esrgan)
    a, b = load_stage1(sr3, dtype=torch.bfloat16), load_stage1(esrgan)
    assert isinstance(a, SR3Stage1) and a.model.dtype == torch.bfloat16 and a.path == sr3
    assert isinstance(b, SpandrelStage1) and b.model.architecture == "ESRGAN" and b.model.native_scale == 4
    garbage = tmp_path / "noise.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(garbage))
    with pytest.raises(CheckpointError, match=r"not SR3, and spandrel .* recognises no architecture in it"):
        load_stage1(garbage)
