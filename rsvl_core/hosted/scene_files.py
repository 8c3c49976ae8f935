"""Scene files for a host's nodes: a raster from the host's input folder read as `rsvl upscale` reads it (bands,
stretch, nodata -> one validity mask; `pipeline.jobs.read_input`), and a result written back as `rsvl upscale`
writes it (`scene_io.write_whole`: the scaled grid, nodata/mask, the RSVL_* tags; COG; 8-bit or the source's type
through the recorded stretch), or a plain 8/16-bit PNG/TIFF for an image without georeferencing. File names are
resolved inside the host's input/ and output/ folders (`paths`); the host's `folder_paths` is passed in."""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..kit.atomic import atomic_path
from ..kit.errors import InputImageError, RsvlError
from ..kit.image import GDAL_ONLY_SUFFIXES, write_image_atomic
from ..scenes.geo import RasterInfo, Stretch
from .paths import resolve_input, resolve_output

SCENE_SUFFIXES = (".tif", ".tiff", *GDAL_ONLY_SUFFIXES, ".png", ".jpg", ".jpeg", ".webp", ".bmp")
FORMATS = ("GeoTIFF", "COG", "PNG", "TIFF")
BIT_DEPTHS = ("8", "16")
# The GeoTIFF the shipped scene template's Load Scene names: the bundled sample, georeferenced, copied into input/
SAMPLE_SCENE = "rsvl_sample_scene.tif"
SAMPLE_SCENE_SOURCE = str(Path(__file__).resolve().parents[1] / "samples" / "osbs_029_lr100.tif")


@dataclass(frozen=True)
class SceneGeo:
    """What travels beside the IMAGE (the RSVL_GEO socket): where the scene lies and how its values were read."""

    file: str                       # the name in input/
    height: int                     # source pixels
    width: int
    info: RasterInfo | None         # CRS, transform, nodata, band descriptions, tags; None: not georeferenced
    stretch: Stretch | None         # how source values became [0, 1] (mapped back for 16-bit / source-type output)
    valid: np.ndarray | None        # (H, W) bool at source resolution, False at nodata / NaN / masked pixels
    notes: tuple[str, ...] = ()

    @property
    def georeferenced(self) -> bool:
        return self.info is not None

    @property
    def crs(self):
        return None if self.info is None else self.info.crs

    @property
    def transform(self):
        return None if self.info is None else self.info.transform

    @property
    def nodata(self) -> float | None:
        return None if self.info is None else self.info.nodata

    @property
    def source_dtype(self) -> str:
        return self.stretch.source_dtype if self.stretch is not None else "uint8"

    @property
    def band_names(self) -> tuple[str, ...]:
        if self.info is None:
            return ()
        return tuple(text or f"band {b}" for b, text in zip(self.info.bands, self.info.descriptions, strict=True))

    def describe(self) -> str:
        """One line for the node: size, place, bands, type, invalid pixels."""
        if self.info is None:
            return f"{self.file}: {self.width}x{self.height}, no georeferencing (a plain image)"
        invalid = 0 if self.valid is None else int((~self.valid).sum())
        return (f"{self.file}: {self.width}x{self.height}, {self.info.crs or 'no CRS'} ({self.info.georeferencing}), "
                f"bands {', '.join(self.band_names)}, {self.source_dtype}"
                + (f", {invalid} nodata pixels" if invalid else ""))


@dataclass
class LoadedScene:
    image: torch.Tensor        # (1, 3, H, W) in [0, 1], invalid pixels filled from valid neighbours (as the CLI)
    geo: SceneGeo
    invalid: torch.Tensor      # (1, H, W) float: 1 at nodata pixels (ComfyUI's MASK: 1 = masked out)


def input_choices(folder_paths) -> list[str]:
    """The files of input/ (and its sub-folders, as "sub/name") that Load Scene reads."""
    root = Path(folder_paths.get_input_directory())
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in SCENE_SUFFIXES and p.is_file() and not p.name.startswith("."))


def input_problem(folder_paths, name: str) -> str | None:
    """What is wrong with a Load Scene file name, in one line (None = fine): for validate_inputs."""
    try:
        path = resolve_input(folder_paths, name)
    except RsvlError as exc:
        return str(exc)
    if not path.is_file():
        return f"{name!r} is not a file in ComfyUI's input folder {folder_paths.get_input_directory()}"
    if path.suffix.lower() not in SCENE_SUFFIXES:
        return f"{name!r}: not a raster or image ({', '.join(SCENE_SUFFIXES)})"
    return None


def input_fingerprint(folder_paths, name: str) -> str:
    """What changes when the file behind a Load Scene name changes (replaced by an upload with overwrite)."""
    try:
        stat = resolve_input(folder_paths, name).stat()
    except (OSError, ValueError, TypeError):
        return str(name)
    return f"{name}:{stat.st_size}:{stat.st_mtime_ns}"


def output_problem(folder_paths, prefix: str) -> str | None:
    """What is wrong with a Save GeoTIFF file name prefix, in one line (None = fine): for validate_inputs."""
    try:
        resolve_output(folder_paths, prefix)
    except RsvlError as exc:
        return str(exc)
    return None


def load_scene(folder_paths, name: str, bands: str = "", stretch: str = "auto", percentiles: str = "") -> LoadedScene:
    """A file of input/ read exactly as `rsvl upscale NAME --bands B --stretch S --percentiles P` reads it (the
    values of the SCENE_SETTINGS rows those flags are made from; "" / "auto": the reader's own choice)."""
    from ..jobs.inputs import read_input, scene_options_from

    problem = input_problem(folder_paths, name)
    if problem is not None:
        raise InputImageError(problem)
    path = resolve_input(folder_paths, name)
    scene = read_input(path, scene_options_from({"bands": bands, "stretch": stretch, "percentiles": percentiles}))
    image = scene.whole()
    if scene.geo is None:
        geo = SceneGeo(name, scene.height, scene.width, None, None, None, tuple(scene.notes))
        stretch_used = scene.record.get("stretch")
        if stretch_used is not None:  # a plain TIFF read through GDAL: keep its stretch for 16-bit output
            geo = replace(geo, stretch=Stretch.from_dict(stretch_used))
    else:
        info, stretch_used, valid = scene.geo
        geo = SceneGeo(name, scene.height, scene.width, info, stretch_used, valid, tuple(scene.notes))
    invalid = torch.zeros(1, scene.height, scene.width)
    if geo.valid is not None:
        invalid[0] = torch.from_numpy(~geo.valid).float()
    return LoadedScene(image.float().clamp(0, 1), geo, invalid)


def scale_of(geo: SceneGeo, height: int, width: int) -> int:
    """The integer factor from the scene's grid to an image of height x width (same on both axes)."""
    scale = width // geo.width
    if scale < 1 or width != geo.width * scale or height != geo.height * scale:
        raise RsvlError(f"the image is {width}x{height} but the scene {geo.file} is {geo.width}x{geo.height}: a "
                        f"GeoTIFF needs the scene's size times a whole factor (2x, 4x, 8x)")
    return scale


def next_target(folder_paths, prefix: str, suffix: str) -> Path:
    """`<prefix>_00001_<suffix>` in output/ with the next number not yet used (as core's Save Image counts)."""
    base = resolve_output(folder_paths, prefix)
    base.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(base.name) + r"_(\d{5,})_\.")
    used = [int(m.group(1)) for p in base.parent.iterdir() if (m := pattern.match(p.name))]
    return base.parent / f"{base.name}_{max(used, default=0) + 1:05d}_{suffix}"


def save_scene(folder_paths, images: torch.Tensor, geo: SceneGeo | None, prefix: str = "rsvl/scene",
               file_format: str = "GeoTIFF", bit_depth: str = "8", tags: dict[str, str] | None = None) -> list[str]:
    """Each (3, H, W) image of the batch -> one file in output/; returns their names relative to output/.

    Georeferenced scene + GeoTIFF/COG: `rsvl upscale`'s own writer (grid scaled by the image size over the scene's,
    nodata and mask kept, RSVL_* tags; bit_depth 16: the source's type through its stretch, e.g. uint16 or float32)
    plus `tags`. Otherwise a plain PNG or TIFF, 8- or 16-bit (GeoTIFF/COG then give a plain TIFF)."""
    if file_format not in FORMATS:
        raise RsvlError(f"format {file_format!r}: choose one of {', '.join(FORMATS)}")
    if str(bit_depth) not in BIT_DEPTHS:
        raise RsvlError(f"bit_depth {bit_depth!r}: choose 8 or 16")
    problem = output_problem(folder_paths, prefix)
    if problem is not None:
        raise RsvlError(problem)
    geotiff = file_format in ("GeoTIFF", "COG") and geo is not None and geo.georeferenced
    suffix = ".tif" if geotiff or file_format != "PNG" else ".png"
    output_root = Path(folder_paths.get_output_directory()).resolve()
    names = []
    for image in images:
        target = next_target(folder_paths, prefix, suffix)
        if geotiff:
            write_scene_geotiff(image[None], geo, target, file_format == "COG", str(bit_depth), tags or {})
        else:
            write_plain(image[None], target, int(bit_depth))
        names.append(target.relative_to(output_root).as_posix())
    return names


def write_scene_geotiff(image: torch.Tensor, geo: SceneGeo, target: Path, cog: bool, bit_depth: str,
                        tags: dict[str, str]) -> None:
    """`rsvl upscale`'s writer (scene_io.write_whole) on the scene the image came from."""
    from ..scenes.sources import SceneSource, write_whole

    scale = scale_of(geo, image.shape[-2], image.shape[-1])
    info = replace(geo.info, tags={**geo.info.tags, **tags}) if tags else geo.info
    source = SceneSource(Path(geo.file), geo.height, geo.width, geo=(info, geo.stretch, geo.valid))
    write_whole(source, image, target, scale, cog, dtype="uint8" if bit_depth == "8" else "source")


def write_plain(image: torch.Tensor, target: Path, bits: int) -> None:
    """An image without georeferencing: 8-bit through the CLI's image writer, 16-bit as an RGB PNG or TIFF."""
    if bits == 8:
        write_image_atomic(image, target)
        return
    array = np.round(image[0].detach().float().clamp(0, 1).cpu().numpy() * 65535).astype(np.uint16)  # (3, H, W)
    with atomic_path(target) as tmp:
        if target.suffix == ".png":
            Path(tmp).write_bytes(png16(array))
        else:
            import warnings

            import rasterio

            with warnings.catch_warnings():  # a plain TIFF has no place: not worth a warning
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(tmp, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=3,
                                   dtype="uint16", photometric="RGB", compress="deflate") as ds:
                    ds.write(array)


def png16(array: np.ndarray) -> bytes:
    """(3, H, W) uint16 -> a 16-bit RGB PNG file (Pillow writes no 16-bit RGB)."""
    height, width = array.shape[1:]
    rows = np.ascontiguousarray(array.transpose(1, 2, 0)).astype(">u2").view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def prompt_tags(prompt: dict | None) -> dict[str, str]:
    """The graph that made the image, as a tag of the GeoTIFF (as core's Save Image keeps it in a PNG)."""
    return {} if not prompt else {"RSVL_COMFY_PROMPT": json.dumps(prompt, separators=(",", ":"))}
