"""`rsvl caption` is a job over the scene reader: multi-band / int16 GeoTIFFs with --bands, bad files reported."""

from __future__ import annotations

import numpy as np
import pytest
from rsvl_testing import tiny_llava_next_folder

from rsvl_core.cli import main
from rsvl_core.jobs.inputs import SceneOptions
from rsvl_core.jobs.work import caption_job
from rsvl_core.pipeline import PipelineModels, StageSpec
from rsvl_core.pipeline.components import CaptionOptions


def write_int16_scene(path, bands: np.ndarray) -> None:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": bands.shape[2], "height": bands.shape[1], "count": bands.shape[0],
               "dtype": "int16", "crs": "EPSG:32617", "transform": from_origin(400000, 3280000, 10, 10)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)


def test_engine_caption_reads_a_four_band_int16_geotiff_and_reports_a_bad_file(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_int16_scene(tmp_path / "scene.tif", rng.integers(-200, 3000, size=(4, 24, 32)).astype(np.int16))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "captions.txt"
    code = main(["caption", str(tmp_path / "scene.tif"), str(tmp_path / "broken.png"), "--llava",
                 str(tiny_llava_next_folder(tmp_path)), "--no-adapter", "--bands", "4,3,2", "--max-new-tokens", "3",
                 "--greedy", "--device", "cpu", "-o", str(out), "-q"])
    assert code == 1  # one input failed, the other was captioned
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and lines[0].startswith("scene.tif: ") and len(lines[0]) > len("scene.tif: ")
    assert "broken.png" in capsys.readouterr().err


def test_engine_caption_job_uses_the_chosen_bands(tmp_path):
    """Different --bands give the captioner different pixels: the job reads bands as `rsvl upscale` does."""
    seen = []

    class Recorder:
        def modules(self):
            return {}

        def caption(self, image, options, callback=None):
            seen.append(image.clone())
            return ["a field"]

    bands = np.stack([np.full((16, 16), v, dtype=np.int16) for v in (100, 900, 1700, 2500)])
    bands[:, :8] //= 2  # some contrast, so a percentile stretch has a range
    write_int16_scene(tmp_path / "s.tif", bands)
    models = PipelineModels("cpu", "resident", captioner=StageSpec("caption", lambda device: Recorder()))
    for choice in ("1,2,3", "4,3,2"):
        summary = caption_job([tmp_path / "s.tif"], CaptionOptions(), models, SceneOptions(bands=choice,
                                                                                            stretch="none"))
        assert summary.captions == [(tmp_path / "s.tif", "a field")] and not summary.failed
    assert seen[0].shape == seen[1].shape == (1, 3, 16, 16)
    assert not np.allclose(seen[0].numpy(), seen[1].numpy())
    assert seen[1][0, 0, 0, -1].item() > seen[0][0, 0, 0, -1].item()  # band 4 (2500) where band 1 (100) was
