"""`rsvl eval` end to end on tiny random models: tables, maps, pictures, resume, a bad image, skip lines."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rsvl_testing import REPO, tiny_sr3_config
from skimage.metrics import peak_signal_noise_ratio

from rsvl_core.cli import main
from rsvl_core.evaluation import PerceptualScorer, PerceptualWeights, collect_dataset
from rsvl_core.evaluation.perceptual import find_perceptual_weights
from rsvl_core.refine.tiny import write_tiny_refiner_files
from rsvl_core.stage1 import SR3UNet, save_sr3

DATA = REPO.parent / "shared" / "data"
SKIP_LINES = ("lpips skipped: provide torchvision's ImageNet AlexNet weights (alexnet-owt-7be5be79.pth)",
              "dists skipped: provide torchvision's ImageNet VGG16 weights (vgg16-397923af.pth)",
              "clip_iqa skipped: provide a Hugging Face CLIP model folder")


def needs_shared_data() -> None:
    if not (DATA / "SOAP_031.png").is_file() or not (DATA / "OSBS_029.tif").is_file():
        pytest.skip(f"{DATA}: the shared CC0 sample images are absent")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two classes: a 33x34 PNG crop (cropped to 32x34 by the protocol) and a broken file; a 32x32 GeoTIFF crop."""
    needs_shared_data()
    import rasterio
    from rasterio.windows import Window

    root = tmp_path_factory.mktemp("hr")
    (root / "forest").mkdir()
    (root / "geo").mkdir()
    Image.open(DATA / "SOAP_031.png").convert("RGB").crop((100, 100, 133, 134)).save(root / "forest" / "soap.png")
    (root / "forest" / "broken.png").write_bytes(b"not an image")
    with rasterio.open(DATA / "OSBS_029.tif") as src:
        window = Window(200, 150, 32, 32)
        profile = {**src.profile, "width": 32, "height": 32, "transform": src.window_transform(window)}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.update(tiled=False)
        with rasterio.open(root / "geo" / "osbs.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), folder / "sr3" / "tiny_gen.pth")
    write_tiny_refiner_files(folder / "sdxl", folder / "supir")
    return folder


def eval_args(dataset: Path, output: Path, models_dir: Path, methods: str = "bicubic,stage1,full") -> list[str]:
    return ["eval", str(dataset), "--scale", "2", "-o", str(output), "--methods", methods, "--models-dir",
            str(models_dir), "--sampler", "ddim", "--steps", "2", "--refine-steps", "1", "--refine-min-size", "0",
            "--caption", "a pine forest", "--samples", "2", "--device", "cpu", "--no-hash", "-q"]


@pytest.fixture(scope="module")
def first_run(dataset, models_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("eval")
    capture = pytest.MonkeyPatch()
    import io
    import sys

    stderr = io.StringIO()
    capture.setattr(sys, "stderr", stderr)
    try:
        code = main(eval_args(dataset, output, models_dir))
    finally:
        capture.undo()
    return output, code, stderr.getvalue()


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def independent_bicubic_psnr_y(path: Path, scale: int) -> float:
    """The bicubic row, recomputed without rsvl: PIL float bicubic down (8-bit LR), PIL bicubic up (8-bit), BT.601 Y,
    a border of `scale` pixels, scikit-image's PSNR."""
    hr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
    height, width = hr.shape[:2]

    def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(array[..., c]), mode="F").resize(
            size, Image.Resampling.BICUBIC)) for c in range(3)]
        return np.round(np.clip(np.stack(planes, -1), 0, 1) * 255) / 255

    sr = resize(resize(hr, (width // scale, height // scale)), (width, height))
    luma = [(16 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255
            for a in (hr.astype(np.float64), sr.astype(np.float64))]
    crop = (slice(scale, -scale), slice(scale, -scale))
    return peak_signal_noise_ratio(luma[0][crop].astype(np.float64), luma[1][crop].astype(np.float64), data_range=1)


def test_eval_run_writes_tables_maps_and_pictures(first_run, dataset):
    output, code, stderr = first_run
    assert code == 1  # the broken image failed; everything else ran
    assert "broken.png" in stderr and "not a readable image" in stderr
    assert "HR 33x34 cropped to 32x34 (a multiple of the scale 2)" in stderr
    rows = read_rows(output / "per_image.csv")
    assert list(rows[0])[:12] == ["image", "class", "method", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb",
                                  "lr_consistency_l1", "spectral_angle_deg", "hallucination_pct", "omission_pct",
                                  "improvement_pct"]
    assert [(r["image"], r["method"]) for r in rows] == [
        ("forest/soap", "bicubic"), ("forest/soap", "stage1"), ("forest/soap", "full"),
        ("geo/osbs", "bicubic"), ("geo/osbs", "stage1"), ("geo/osbs", "full")]
    for row in rows:
        values = {k: float(row[k]) for k in list(row)[3:12]}
        assert all(math.isfinite(v) for v in values.values()), row
        assert values["hallucination_pct"] + values["omission_pct"] + values["improvement_pct"] == \
            pytest.approx(100.0, abs=1e-3)
    bicubic = next(r for r in rows if r["image"] == "forest/soap" and r["method"] == "bicubic")
    assert float(bicubic["psnr_y"]) == pytest.approx(independent_bicubic_psnr_y(dataset / "forest" / "soap.png", 2),
                                                     abs=1e-9)
    assert float(bicubic["psnr_y"]) > 20  # a real baseline on a real image; random models land far below
    # summaries: per class and overall, CSV + Markdown + JSON with the provenance
    by_class = read_rows(output / "summary_by_class.csv")
    assert {(r["class"], r["method"]) for r in by_class} == {(c, m) for c in ("forest", "geo")
                                                            for m in ("bicubic", "stage1", "full")}
    overall = {r["method"]: r for r in read_rows(output / "summary_overall.csv")}
    psnrs = [float(r["psnr_y"]) for r in rows if r["method"] == "stage1"]
    assert float(overall["stage1"]["psnr_y"]) == pytest.approx(sum(psnrs) / 2) and overall["stage1"]["n"] == "2"
    summary = json.loads((output / "summary.json").read_text())
    assert summary["command"].startswith("rsvl eval") or summary["command"] == "rsvl eval (library call)"
    assert summary["versions"]["torch"] == str(torch.__version__) and "scikit-image" in summary["versions"]
    assert summary["versions"]["torch_cuda"] == torch.version.cuda
    assert {"stage1", "refine"} <= set(summary["model_files"])
    assert summary["model_files"]["stage1"][0]["path"].endswith("tiny_gen.pth")
    assert summary["protocol"]["hr_cropped_images"] == {"forest/soap": [0, 1]}
    assert summary["failures"][0]["image"] == "forest/broken"
    markdown = (output / "summary.md").read_text()
    assert "| method | n | psnr_y |" in markdown and "## Per class" in markdown and SKIP_LINES[0] in markdown
    # pictures and maps
    for picture in ("summary_chart.png", "sheets/forest/soap.png", "sheets/geo/osbs.png"):
        with Image.open(output / picture) as image:
            assert image.size[0] > 200, picture
    for image_id in ("forest/soap", "geo/osbs"):
        for method in ("stage1", "full"):
            for kind in ("std", "hallucination"):
                with Image.open(output / "maps" / image_id / f"{method}_{kind}.png") as image:
                    assert image.mode == "L" and image.size == ((32, 34) if image_id == "forest/soap" else (32, 32))
    std = np.asarray(Image.open(output / "maps/forest/soap/full_std.png"))
    assert std.max() > 0  # two seeds of a stochastic method differ
    # --samples 2: does the spread point at the errors? (pipeline methods only; baselines have one sample)
    for row in rows:
        if row["method"] == "bicubic":
            assert row["std_error_spearman"] == row["error_most_uncertain"] == ""
        else:
            assert -1 <= float(row["std_error_spearman"]) <= 1
            assert float(row["error_most_uncertain"]) >= 0 and float(row["error_least_uncertain"]) >= 0
    assert "std_error_spearman" in overall["full"] and "std_error_spearman" in markdown


def test_eval_geotiff_inputs_get_georeferenced_maps(first_run, dataset):
    import rasterio

    output, _, _ = first_run
    assert not (output / "maps/forest/soap/full_std.tif").exists()  # a PNG input: PNG maps only
    with rasterio.open(dataset / "geo" / "osbs.tif") as src:
        crs, transform = src.crs, src.transform
    for kind in ("std", "hallucination"):
        with rasterio.open(output / "maps" / "geo" / "osbs" / f"full_{kind}.tif") as tif:
            assert tif.crs == crs and tif.transform == transform and (tif.width, tif.height) == (32, 32)
            assert tif.count == 1 and tif.dtypes[0] == "float32"
            values = tif.read(1)
    assert np.isnan(values[0, 0]) or kind == "std"  # the unscored border of the hallucination map is nodata


def test_eval_resume_skips_finished_pairs(first_run, dataset, models_dir, tmp_path, capsys):
    output, _, _ = first_run
    before = {p: p.stat().st_mtime_ns for p in (output / "pairs").rglob("*.json")}
    assert len(before) == 6
    (output / "pairs/geo/osbs/bicubic.json").unlink()
    code = main(eval_args(dataset, output, models_dir))
    err = capsys.readouterr().err
    assert code == 1
    assert "1 image x method pair(s) computed, 5 read back from an earlier run" in err
    after = {p: p.stat().st_mtime_ns for p in (output / "pairs").rglob("*.json")}
    changed = [p.relative_to(output).as_posix() for p in after if after[p] != before.get(p)]
    assert changed == ["pairs/geo/osbs/bicubic.json"]
    assert len(read_rows(output / "per_image.csv")) == 6
    # other settings are another experiment: those pairs are recomputed, not mixed in
    code = main([*eval_args(dataset, output, models_dir, "bicubic"), "--degrade-noise", "0.02"])
    assert "2 image x method pair(s) computed, 0 read back" in capsys.readouterr().err


def test_eval_flat_folder_and_missing_perceptual_weights_skip_with_one_line(tmp_path, capsys):
    needs_shared_data()
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.open(DATA / "SOAP_031.png").convert("RGB").crop((0, 0, 32, 32)).save(flat / "a.png")
    assert [(i.image_class, i.name) for i in collect_dataset(flat)] == [("all", "a")]
    code = main(["eval", str(flat), "--scale", "2", "-o", str(tmp_path / "out"), "--methods", "bicubic,lanczos",
                 "--models-dir", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 0
    for line in SKIP_LINES:
        assert err.count(line) == 1
    rows = read_rows(tmp_path / "out" / "per_image.csv")
    assert [r["method"] for r in rows] == ["bicubic", "lanczos"] and "lpips" not in rows[0]
    assert main(["eval", str(flat), "--scale", "2", "-o", str(tmp_path / "o2"), "--methods", "bicubic,nope"]) == 2
    assert "--methods 'bicubic,nope': unknown nope" in capsys.readouterr().err
    assert main(["eval", str(flat), "--scale", "2", "-o", str(tmp_path / "o3"), "--methods", "bicubic",
                 "--lpips-weights", str(tmp_path / "missing.pth")]) == 2
    assert "--lpips-weights" in capsys.readouterr().err


def test_eval_perceptual_weights_load_from_local_files(tmp_path):
    """LPIPS and DISTS through their real loading path: torchvision backbones (random here) in a local file."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    alexnet = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    save_file(alexnet, tmp_path / "alexnet-owt-7be5be79.safetensors")
    vgg = {f"features.{k}": v.contiguous() for k, v in
           torchvision.models.vgg16(weights=None).features.state_dict().items()}
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    scorer = PerceptualScorer(PerceptualWeights(lpips=tmp_path / "alexnet-owt-7be5be79.safetensors",
                                                dists=tmp_path / "vgg16-397923af.pth"))
    assert scorer.names == ("lpips", "dists") and len(scorer.skipped) == 1 and "clip_iqa" in scorer.skipped[0]
    hr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    other = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    same, different = scorer.score(hr, hr), scorer.score(other, hr)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6) and same["dists"] == pytest.approx(0.0, abs=1e-5)
    assert different["lpips"] > 1e-4 and different["dists"] > 1e-3
    # a file of the wrong network is refused, naming it and what was expected
    save_file({"features.0.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "wrong.safetensors")
    from rsvl_core.kit.errors import RsvlError

    with pytest.raises(RsvlError, match=r"wrong.safetensors.*AlexNet"):
        PerceptualScorer(PerceptualWeights(lpips=tmp_path / "wrong.safetensors")).score(hr, hr)


def tiny_clip_folder(folder: Path) -> Path:
    """A Hugging Face CLIP folder as users give it (config, safetensors weights, tokenizer, image processor), with
    random tiny weights and the CLIP tokenizer files the refiner ships."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from rsvl_core.refine.nets.text import TOKENIZER_DIR as CLIP_TOKENIZER_DIR

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                     "num_attention_heads": 2, "vocab_size": 49408, "max_position_embeddings": 77},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    tokenizer = CLIPTokenizer(str(CLIP_TOKENIZER_DIR / "vocab.json"), str(CLIP_TOKENIZER_DIR / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_eval_clip_iqa_loads_a_local_clip_folder(tmp_path):
    """CLIP-IQA through its real loading path: a local folder, nothing downloaded; a score in [0, 1] that depends
    on the image, the same on a second call; a folder that is not CLIP is refused naming it."""
    clip = tiny_clip_folder(tmp_path / "eval" / "clip")
    weights = find_perceptual_weights(tmp_path)
    assert weights.clip == clip and weights.lpips is None
    scorer = PerceptualScorer(weights, tmp_path)
    assert scorer.names == ("clip_iqa",) and len(scorer.skipped) == 2
    a = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    b = torch.zeros(1, 3, 48, 48)
    first, again, other = scorer.score(a, a)["clip_iqa"], scorer.score(a, a)["clip_iqa"], scorer.score(b, a)["clip_iqa"]
    assert 0.0 <= first <= 1.0 and first == again and abs(first - other) > 1e-6
    (tmp_path / "notclip").mkdir()
    (tmp_path / "notclip" / "config.json").write_text('{"model_type": "bert"}')
    from rsvl_core.kit.errors import RsvlError

    with pytest.raises(RsvlError, match="notclip"):
        PerceptualScorer(PerceptualWeights(clip=tmp_path / "notclip")).score(a, a)


def test_engine_eval_reads_bands_and_runs_windows_as_upscale_does(models_dir, tmp_path):
    """`rsvl eval` reads a 4-band uint16 GeoTIFF with --bands/--stretch as `rsvl upscale` does, runs the methods in
    windows through the job API, and its stage-1 output is exactly what `rsvl upscale` makes of the same LR."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 4, 8, 8))), size=(48, 48),
                                             mode="bilinear", align_corners=False)[0].numpy()
    bands = (smooth * 4000 + 500).astype(np.uint16)  # B, G, R, NIR as a 12-bit sensor stores them
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    profile = {"driver": "GTiff", "width": 48, "height": 48, "count": 4, "dtype": "uint16", "crs": "EPSG:32617",
               "transform": from_origin(400000, 3280000, 0.5, 0.5)}
    with rasterio.open(hr_dir / "scene.tif", "w", **profile) as dst:
        dst.write(bands)
    output = tmp_path / "eval"
    common = ["--models-dir", str(models_dir), "--sampler", "ddim", "--steps", "2", "--device", "cpu", "--no-hash",
              "-q", "--window-size", "16", "--window-overlap", "4", "--seed", "3"]
    assert main(["eval", str(hr_dir), "--scale", "2", "-o", str(output), "--methods", "stage1", "--bands", "3,2,1",
                 "--stretch", "percentile", *common]) == 0
    record = json.loads((output / "pairs" / "all" / "scene" / "stage1.json").read_text())
    assert record["hr_read"]["georeference"]["bands"] == [3, 2, 1]
    assert record["hr_read"]["stretch"]["method"] == "percentile"
    assert record["windows"]["count"] == 4 and record["windows"]["size"] == 16  # 24x24 LR in 16-px windows
    lr = output / "images" / "all" / "scene" / "lr.png"
    assert main(["upscale", str(lr), "-o", str(tmp_path / "up"), "--scale", "2", "--stage1-only", *common]) == 0
    upscaled = np.asarray(Image.open(tmp_path / "up" / "lr_x2.png"))
    evaluated = np.asarray(Image.open(output / "images" / "all" / "scene" / "stage1.png"))
    assert upscaled.shape == evaluated.shape == (48, 48, 3)
    # exact: one process, the same LR (8-bit), windows, seed and tensor shapes on both sides: the same float32 ops
    assert np.array_equal(upscaled, evaluated)
