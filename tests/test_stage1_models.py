"""Any stage-1 model from the command line and the job API: SR3 or a spandrel SR network, told apart by keys."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from rsvl_testing import SAMPLE_IMAGE, tiny_compact, tiny_esrgan
from safetensors.torch import save_file

from rsvl_core.cli import main
from rsvl_core.demo import write_demo_models
from rsvl_core.stage1 import SpandrelStage1, SR3Stage1, load_stage1
from rsvl_core.stages import Stage1


@pytest.fixture(scope="module")
def spandrel_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscale_models")
    esrgan, compact = root / "4x_tiny_esrgan.pth", root / "2x_tiny_compact.safetensors"
    torch.save({"params_ema": tiny_esrgan()}, esrgan)
    save_file(tiny_compact(scale=2), str(compact))
    return {"esrgan": esrgan, "compact": compact}


@pytest.fixture
def small_input(tmp_path):
    path = tmp_path / "in.png"
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((5, 7, 26, 20)).save(path)  # 21 x 13, odd and non-square
    return path


def test_spandrel_and_sr3_files_load_as_stage1_by_their_keys(spandrel_files, tmp_path):
    models = write_demo_models(tmp_path / "m")
    sr3 = load_stage1(models["sr3"])
    assert isinstance(sr3, SR3Stage1) and sr3.kind == "sr3" and set(sr3.modules()) == {"unet"}
    esrgan = load_stage1(spandrel_files["esrgan"])
    assert isinstance(esrgan, SpandrelStage1) and esrgan.model.architecture == "ESRGAN"
    assert esrgan.model.native_scale == 4 and list(esrgan.modules()) == ["model"]
    assert isinstance(sr3, Stage1) and isinstance(esrgan, Stage1)  # both satisfy the pipeline's protocol


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_spandrel_x4_model_from_the_cli_gives_exactly_input_times_scale(spandrel_files, small_input, tmp_path,
                                                                         scale):
    out = tmp_path / "out"
    assert main(["upscale", str(small_input), "-o", str(out), "--scale", str(scale), "--stage1-only", "-q",
                 "--stage1-model", str(spandrel_files["esrgan"])]) == 0
    with Image.open(out / f"in_x{scale}.png") as image:
        assert image.size == (21 * scale, 13 * scale)
    record = json.loads((out / f"in_x{scale}.json").read_text())
    stage1 = record["stage1"]
    assert (stage1["model"], stage1["architecture"], stage1["native_scale"]) == ("spandrel", "ESRGAN", 4)
    assert stage1["resampled"] is (scale != 4)
    assert (stage1["resample_filter"] is None) is (scale == 4)
    assert record["models"]["stage1"][0]["path"] == str(spandrel_files["esrgan"])


def test_spandrel_stage1_feeds_the_refiner_and_the_sr3_alias_still_works(spandrel_files, small_input, tmp_path):
    models = tmp_path / "models"
    write_demo_models(models)
    out = tmp_path / "out"
    common = ["upscale", str(small_input), "-o", str(out), "--scale", "2", "--models-dir", str(models), "-q",
              "--caption", "fields", "--refine-steps", "2", "--refine-min-size", "0", "--overwrite"]
    assert main([*common, "--stage1-model", str(spandrel_files["compact"])]) == 0
    record = json.loads((out / "in_x2.json").read_text())
    assert record["stage1"]["architecture"] == "RealESRGAN Compact" and record["stage1"]["resampled"] is False
    assert record["refine"]["unet_calls"] == 2
    first = (out / "in_x2.png").read_bytes()
    assert main([*common, "--sr3", str(spandrel_files["compact"])]) == 0  # the seed-era flag names the same thing
    assert (out / "in_x2.png").read_bytes() == first  # a spandrel stage 1 is deterministic


def test_a_wrong_file_as_stage1_is_named_with_what_it_is(small_input, tmp_path, capsys):
    bad = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2)}, str(bad))
    assert main(["upscale", str(small_input), "-o", str(tmp_path / "o"), "--stage1-only",
                 "--stage1-model", str(bad)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "SDXL" in errors[0] and "not a stage-1 model" in errors[0]
