"""`rsvl eval`'s engine: HR images -> the protocol's LR inputs -> every method -> metrics, maps, pictures, tables.

Per image: read HR (crop to a multiple of the scale, reported), make the LR input once (degrade.py), run
each method on it with the same seeds (baselines here; `stage1`, `full` and presets through the engine's
`run_pipeline`, so nothing of the pipeline is repeated here), score the result (8-bit, as saved), and write
`pairs/<class>/<image>/<method>.json` — the resume point: a pair whose JSON matches this run's settings is
not recomputed. A bad image is reported and the rest continue. Tables, the chart and the provenance
(command line, versions, model files) are written at the end from every pair's JSON.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from ..jobs.inputs import (
    STORAGE_ERRORS,
    JobEvents,
    JobSummary,
    SceneOptions,
    model_files_record,
    prepare_output_folder,
    printable,
    read_input,
    upscale_image,
)
from ..jobs.samples import deterministic_stage1, zero_spread_text
from ..jobs.work import Assembler, ClaimedScene, WorkItem, run_local
from ..kit.atomic import Claim
from ..kit.errors import RsvlError
from ..kit.image import list_images, write_image_atomic
from ..kit.progress import ProgressCallback
from ..pipeline import PipelineModels, RunConfig
from .degrade import BASELINES, DegradeOptions, crop_to_multiple, degrade, image_seed, upsample_baseline
from .hallucination import CORRECTNESS_METRICS, correctness, opensr_test_version
from .maps import hallucination_map, std_map, write_map_geotiff, write_map_png
from .metrics import CONSISTENCY_METRICS, REFERENCE_METRICS, consistency_metrics, reference_metrics
from .perceptual import PERCEPTUAL_METRICS, PerceptualScorer
from .report import json_safe, write_comparison_sheet, write_summary_chart, write_tables, write_text_atomic
from .uncertainty import UNCERTAINTY_METRICS, uncertainty_vs_error

ALL_METRICS = (REFERENCE_METRICS + CONSISTENCY_METRICS + CORRECTNESS_METRICS + PERCEPTUAL_METRICS
               + UNCERTAINTY_METRICS)
OPTIONAL_METRICS = PERCEPTUAL_METRICS + UNCERTAINTY_METRICS  # columns only where some pair has them
FLAT_CLASS = "all"  # the class of images directly inside HR_DIR
CONVENTIONS = ("metrics on the 8-bit SR output vs HR, data range 1; PSNR/SSIM with a border of `scale` pixels "
               "cropped; Y = BT.601 (16 + 65.481 R + 128.553 G + 24.966 B) / 255; SSIM Gaussian 11x11, "
               "sigma 1.5, K1 0.01, K2 0.03")
PACKAGES = ("rsvl", "torch", "numpy", "Pillow", "scikit-image", "torchmetrics", "opensr-test", "matplotlib",
            "transformers", "diffusers", "spandrel", "rasterio")


@dataclass(frozen=True)
class EvalImage:
    """One HR image of the dataset: its file, class (sub-folder name, or `all`) and stem used in outputs."""

    path: Path
    image_class: str
    name: str

    @property
    def image_id(self) -> str:
        return f"{self.image_class}/{self.name}"


@dataclass(frozen=True)
class EvalOptions:
    """One evaluation: where, at which scale, which methods (name -> RunConfig; None for the baselines)."""

    output_dir: Path
    scale: int
    methods: dict[str, RunConfig | None]
    degrade: DegradeOptions = field(default_factory=DegradeOptions)
    seed: int = 0
    samples: int = 1               # seeds per stochastic method (seed, seed + 1, ...); >= 2 gives std maps
    overwrite: bool = False        # recompute finished pairs
    command: str = ""              # the command line, recorded in summary.json
    hash_models: bool = True
    scene: SceneOptions = field(default_factory=SceneOptions)  # how HR files are read, and windows for the methods

    def check(self) -> None:
        """Refuse an inconsistent evaluation before any image is read, naming the setting."""
        self.degrade.check()
        if not self.methods:
            raise ValueError("--methods: name at least one method")
        for name, config in self.methods.items():
            if (config is None) != (name in BASELINES):
                raise ValueError(f"method {name!r}: baselines ({', '.join(BASELINES)}) take no pipeline "
                                 "configuration and every other method needs one")
            if config is not None and config.scale != self.scale:
                raise ValueError(f"method {name!r} runs at scale {config.scale}, the evaluation at {self.scale}")
        if self.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {self.samples}")


@dataclass
class EvalSummary:
    rows: list[dict] = field(default_factory=list)              # one per image x method (pairs' JSON rows)
    computed: list[str] = field(default_factory=list)           # "<image id> <method>" computed now
    skipped: list[str] = field(default_factory=list)            # finished before: read back (resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image id [method], message)
    files: dict[str, Path] = field(default_factory=dict)


class EvalEvents:
    """What a face shows while an evaluation runs; every method is optional (the base shows nothing)."""

    def begin(self, pairs: int) -> None:
        """How many image x method pairs the evaluation covers."""

    def note(self, text: str) -> None:
        """A line worth saying (an HR crop, a skipped metric)."""

    def progress(self, image_id: str, method: str) -> ProgressCallback | None:
        """The progress callback for one pair's stages (None: none shown)."""
        return None

    def pair_done(self, image_id: str, method: str, skipped: bool) -> None:
        """A pair is computed, or read back from an earlier run."""

    def failed(self, what: str, message: str) -> None:
        """An image or pair failed; the rest go on."""


def collect_dataset(hr_dir: Path) -> list[EvalImage]:
    """A flat folder (class `all`), or class sub-folders (AID, UC Merced, RSC11, RSSCN7, WHU-RS19 layouts)."""
    hr_dir = Path(hr_dir)
    if not hr_dir.is_dir():
        raise RsvlError(f"{hr_dir}: no such folder (HR_DIR must be a folder of images or of class folders)")
    groups = [(FLAT_CLASS, list_images(hr_dir))]
    groups += [(sub.name, list_images(sub)) for sub in sorted(hr_dir.iterdir())
               if sub.is_dir() and not sub.name.startswith(".")]
    images = []
    for image_class, paths in groups:
        stems = [p.stem for p in paths]
        for path in paths:  # a.png and a.jpg in one class keep their extension in the name
            name = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
            images.append(EvalImage(path, image_class, name))
    if not images:
        raise RsvlError(f"{hr_dir}: no images in it or in its sub-folders")
    return images


def method_kind(config: RunConfig | None) -> str:
    """baseline, stage1 (no refiner) or full (stage 1 + caption + refiner)."""
    if config is None:
        return "baseline"
    return "stage1" if config.refine is None else "full"


def fingerprint(options: EvalOptions, name: str, perceptual: Sequence[str]) -> str:
    """What a pair's numbers depend on; a finished pair with another fingerprint is recomputed."""
    config = options.methods[name]
    content = {"scale": options.scale, "degrade": asdict(options.degrade), "seed": options.seed, "method": name,
               "config": repr(config), "samples": options.samples if config is not None else 1,
               "perceptual": sorted(perceptual), "scene": repr(options.scene)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class _Paths:
    """Where one image's files go."""

    def __init__(self, root: Path, image: EvalImage) -> None:
        self.images = root / "images" / image.image_class / image.name
        self.pairs = root / "pairs" / image.image_class / image.name
        self.maps = root / "maps" / image.image_class / image.name
        self.sheet = root / "sheets" / image.image_class / f"{image.name}.png"

    def pair(self, method: str) -> Path:
        return self.pairs / f"{method}.json"


def _finished(path: Path, expected: str) -> dict | None:
    """The pair's record if it is complete and was made with the same settings, else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("fingerprint") == expected else None


def _quantised(image: torch.Tensor) -> torch.Tensor:
    """As saved: clipped to [0, 1] and rounded to 8 bits."""
    return image.float().clamp(0, 1).mul(255).round().div(255)


@dataclass
class EvalScene(ClaimedScene):
    """One HR image claimed by this run: its finished pairs (read back), the pairs to compute, HR and LR."""

    image: EvalImage | None = None
    paths: _Paths | None = None
    expected: dict[str, str] = field(default_factory=dict)
    finished: dict[str, dict | None] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    hr: torch.Tensor | None = None
    lr: torch.Tensor | None = None
    grid: object = None
    shared: dict = field(default_factory=dict)   # stage-1 results of full runs, by (stage-1 settings, seed)
    computed: int = 0


@dataclass
class EvalItem(WorkItem):
    """One image x method pair (`method`), or the image's closing item (`kind` "image": rows and the sheet)."""

    method: str = ""

    def call(self) -> tuple:
        return self.kind, self.scene, self.method


class Evaluation:
    """One evaluation run over a dataset (see the module doc); `run()` returns the summary. A job of the work-item
    loop (`pipeline.work.run_local`): each HR image is claimed (or skipped: every pair finished with these
    settings), planned as its pairs (HR read and degraded once), each pair executed (the method's seeds, this
    class's `execute`) and scored by the sink (`EvalSink`)."""

    def __init__(self, hr_dir: Path, options: EvalOptions, models: PipelineModels | None,
                 perceptual: PerceptualScorer, events: EvalEvents | None = None) -> None:
        options.check()
        if models is None and any(c is not None for c in options.methods.values()):
            raise ValueError("methods other than the baselines need the pipeline's models")
        self.hr_dir, self.options, self.models, self.perceptual = Path(hr_dir), options, models, perceptual
        self.events = events or EvalEvents()
        self.summary = EvalSummary()
        self.job = JobSummary()  # the loop's own tally (the storage stop); the evaluation's is `summary`
        self.models_ready = False
        self.crops: dict[str, list[int]] = {}
        self.reads: dict[str, dict] = {}  # how each HR file was read (GeoTIFF bands, stretch), for the pair records
        self.correctness_implementation: str | None = None
        self.deterministic: dict[str, str] = {}  # methods whose samples are one image (no spread to rank by)

    # 1. the run
    def run(self) -> EvalSummary:
        images = collect_dataset(self.hr_dir)
        for stale in prepare_output_folder(self.options.output_dir):
            self.events.note(f"{stale}: removed a temporary file left by an interrupted run")
        for line in self.perceptual.skipped:
            self.events.note(line)
        self.events.begin(len(images) * len(self.options.methods))
        run_local(images, self._claim, lambda: (self, EvalSink(self)), self._plan, JobEvents(), self.job)
        self.summary.files.update(self._write_report())
        return self.summary

    # 2. one image: claimed (or skipped), planned as its pairs
    def _claim(self, image: EvalImage) -> EvalScene | None:
        options, paths = self.options, _Paths(self.options.output_dir, image)
        expected = {m: fingerprint(options, m, self.perceptual.names) for m in options.methods}
        finished = {m: None if options.overwrite else _finished(paths.pair(m), expected[m]) for m in options.methods}
        pending = [m for m, r in finished.items() if r is None]
        scene = EvalScene(image.path, paths.pairs, False, Claim(paths.pairs), image=image, paths=paths,
                          expected=expected, finished=finished, pending=pending)
        if pending or not paths.sheet.is_file():
            paths.pairs.parent.mkdir(parents=True, exist_ok=True)
            holder = scene.claim.acquire()
            if holder is None:
                return scene
            self.events.note(f"{image.image_id}: being evaluated by another run ({holder}): left to it")
            scene.pending = []
        self._close_image(scene)  # every pair finished before (or another run's): read back
        return None

    def _plan(self, scene: EvalScene, _sink) -> list[EvalItem]:
        """HR read and degraded once (a bad image fails its pending pairs), then one item per pending pair
        (full runs first: a stage-1 method takes their stage-1 result) and the image's closing item."""
        options, paths = self.options, scene.paths
        try:
            scene.hr, scene.grid = self._read_hr(scene.image)
            scene.lr = degrade(scene.hr, options.scale, options.degrade,
                               image_seed(options.seed, scene.image.image_id))
            write_image_atomic(scene.lr, paths.images / "lr.png")
        except (RsvlError, ValueError, OSError) as exc:
            self._fail(scene.image.image_id, str(exc), count=len(scene.pending))
            scene.pending, scene.hr = [], None
        if any(options.methods[m] is not None for m in scene.pending) and not self.models_ready:
            self.models.preload()  # a wrong weights file stops the run here, before any result
            self.models_ready = True
        order = sorted(scene.pending, key=lambda m: {"full": 0, "stage1": 1, "baseline": 2}[
            method_kind(options.methods[m])])
        return [*(EvalItem("pair", scene, method=m) for m in order), EvalItem("image", scene)]

    # 3. one pair: the method's samples (the executor's call), then scored by the sink
    def execute(self, kind: str, scene: EvalScene, method: str, callback=None) -> dict | None:
        if kind != "pair":
            return None
        started = time.perf_counter()
        config = self.options.methods[method]
        if config is None:
            samples, extra = [upsample_baseline(scene.lr, self.options.scale, BASELINES[method])], {}
        else:
            samples, extra = self._run_method(scene.image, method, config, scene.lr, scene.shared)
        return {"samples": samples, "extra": extra, "started": started}

    def _close_image(self, scene: EvalScene) -> None:
        """After an image's pairs: pairs read back are reported, its rows kept (in --methods order), the sheet
        drawn when something changed."""
        image, paths = scene.image, scene.paths
        for method, record in scene.finished.items():
            if record is not None and method not in scene.pending:
                self.summary.skipped.append(f"{image.image_id} {method}")
                self.events.pair_done(image.image_id, method, skipped=True)
        for method in self.options.methods:  # rows in the order the methods were asked for
            if scene.finished[method] is not None and scene.finished[method].get("deterministic"):
                self.deterministic[method] = scene.finished[method]["deterministic"]
            if scene.finished[method] is not None:
                self.summary.rows.append({"image": image.image_id, "class": image.image_class, "method": method,
                                          **{k: v for k, v in scene.finished[method]["metrics"].items()}})
        if scene.hr is not None and (scene.computed or not paths.sheet.is_file()):
            self._sheet(image, scene.hr, paths)

    def _read_hr(self, image: EvalImage) -> tuple[torch.Tensor, object]:
        """The HR image cropped to a multiple of the scale (said, never silent), and its GeoTIFF grid or None."""
        scene = read_input(image.path, self.options.scene)
        self.reads[image.image_id] = scene.record
        hr, removed = crop_to_multiple(scene.whole(), self.options.scale)
        if removed is not None:
            self.crops[image.image_id] = [*removed]
            self.events.note(f"{image.image_id}: HR {scene.width}x{scene.height} cropped to {hr.shape[-1]}x"
                             f"{hr.shape[-2]} (a multiple of the scale {self.options.scale}): {removed[0]} row(s) "
                             f"and {removed[1]} column(s) removed at the bottom/right")
        border = self.options.scale
        if min(hr.shape[-2:]) - 2 * border < 11:
            raise ValueError(f"{image.path}: HR is {hr.shape[-1]}x{hr.shape[-2]}; with the {border}-pixel border "
                             "crop SSIM's 11x11 window does not fit (need at least "
                             f"{11 + 2 * border} pixels a side)")
        grid = scene.geo[0] if scene.geo is not None else None
        return hr.float(), grid

    def score(self, scene: EvalScene, method: str, samples: list[torch.Tensor], extra: dict) -> dict:
        """The sink's part of a pair: the first sample as saved (8-bit), its metrics against HR and the LR, the
        maps of a pipeline method; the pair's record."""
        options, image, hr, lr = self.options, scene.image, scene.hr, scene.lr
        config = options.methods[method]
        record: dict = {"image": printable(image.image_id), "class": printable(image.image_class), "method": method,
                        "source": printable(str(image.path)), "hr_size": [hr.shape[-1], hr.shape[-2]],
                        "hr_crop_rows_cols": self.crops.get(image.image_id), "hr_read": self.reads.get(image.image_id),
                        **extra}
        sr = _quantised(samples[0])
        write_image_atomic(sr, scene.paths.images / f"{method}.png")
        metrics = reference_metrics(sr, hr, options.scale)
        metrics.update(consistency_metrics(sr, lr, options.scale))
        verdict = correctness(lr, sr, hr, options.scale)
        self.correctness_implementation = verdict.implementation
        metrics.update(verdict.percentages)
        metrics.update(self.perceptual.score(sr, hr))
        record["metrics"] = metrics
        if config is not None and len(samples) >= 2:  # does the spread point at the errors?
            metrics.update(uncertainty_vs_error(std_map(samples), sr, hr, options.scale))
        if config is not None:
            class_maps = [verdict.classes] + [correctness(lr, _quantised(s), hr, options.scale).classes
                                              for s in samples[1:]]
            record["maps"] = self._write_maps(method, samples, class_maps, hr, scene.grid, scene.paths)
        return record

    def _run_method(self, image: EvalImage, method: str, config: RunConfig, lr: torch.Tensor,
                    shared: dict) -> tuple[list[torch.Tensor], dict]:
        """N seeds of a pipeline method through the job API's `upscale_image` (whole, or by windows as `rsvl
        upscale` runs a scene); a stage-1 result that a full run of this image
        already made with the same stage-1 settings and seed is taken from it instead of recomputed."""
        samples, captions, reused, windows = [], [], 0, None
        one_pass = config.refine is None and deterministic_stage1(self.models.get("stage1"))
        count = 1 if one_pass else self.options.samples  # a deterministic method: every seed gives one image
        for k in range(count):
            seed = self.options.seed + k
            key = (repr(config.stage1), seed)
            if config.refine is None and key in shared:
                samples.append(shared[key])
                reused += 1
                continue
            callback = self.events.progress(image.image_id, method if k == 0 else f"{method} sample {k + 1}")
            run = upscale_image(lr, replace(config, seed=seed), self.models, self.options.scene.windows, callback)
            if run.stage1_image is not None:
                shared.setdefault(key, run.stage1_image)
            samples.append(run.image)
            captions.append(run.caption)
            windows = run.record.get("windows")
        extra = {"seeds": [self.options.seed + k for k in range(count)], "kind": method_kind(config)}
        if one_pass and self.options.samples > 1:
            extra["deterministic"] = zero_spread_text(self.options.samples)
            if method not in self.deterministic:
                self.events.note(f"{method}: {extra['deterministic']}; its uncertainty columns stay empty")
            self.deterministic[method] = extra["deterministic"]
        if reused:
            extra["stage1_taken_from_full_run"] = reused
        if windows is not None:
            extra["windows"] = {k: windows[k] for k in ("count", "size", "overlap", "caption_per")}
        if any(c is not None for c in captions):
            extra["captions"] = captions
        return samples, extra

    def _write_maps(self, method: str, samples: list[torch.Tensor], class_maps: list[torch.Tensor],
                    hr: torch.Tensor, grid, paths: _Paths) -> dict[str, str]:
        height, width = hr.shape[-2:]
        maps = {"hallucination": (hallucination_map(class_maps, height, width, self.options.scale), 1.0,
                                  "share of samples classed hallucination (opensr-test rule)")}
        if len(samples) >= 2:
            maps["std"] = (std_map(samples), 2.0, "per-pixel standard deviation over samples (RGB mean)")
        written = {}
        for kind, (values, gain, description) in maps.items():
            png = write_map_png(values, paths.maps / f"{method}_{kind}.png", gain)
            written[f"{kind}_png"] = str(png.relative_to(self.options.output_dir))
            if grid is not None:
                tif = write_map_geotiff(values, paths.maps / f"{method}_{kind}.tif", grid, description)
                written[f"{kind}_geotiff"] = str(tif.relative_to(self.options.output_dir))
        return written

    def _sheet(self, image: EvalImage, hr: torch.Tensor, paths: _Paths) -> None:
        """LR | each method | HR, from the saved 8-bit images (so a resumed run draws the same sheet)."""
        from ..kit.image import read_image

        panels = []
        lr, _ = read_image(paths.images / "lr.png")
        panels.append(("LR (input)", torch.nn.functional.interpolate(lr, size=hr.shape[-2:], mode="nearest")))
        for method in self.options.methods:
            path = paths.images / f"{method}.png"
            if path.is_file():
                panels.append((method, read_image(path)[0]))
        panels.append(("HR", hr))
        try:
            write_comparison_sheet(paths.sheet, panels, f"{image.image_id} (x{self.options.scale}; zoom: centre "
                                   "quarter)")
        except OSError as exc:
            self._fail(f"{image.image_id} sheet", str(exc), count=0)

    def _fail(self, what: str, message: str, count: int) -> None:
        self.summary.failed.append((what, message))
        self.events.failed(what, message)
        for _ in range(count):
            self.events.pair_done(what, "", skipped=False)

    # 4. tables, chart, provenance
    def _write_report(self) -> dict[str, Path]:
        options, rows = self.options, self.summary.rows
        metrics = [m for m in ALL_METRICS if any(r.get(m) is not None for r in rows)
                   or m not in OPTIONAL_METRICS]
        provenance = {
            "command": options.command, "hr_dir": str(self.hr_dir), "scale": options.scale, "seed": options.seed,
            "samples": options.samples, "methods": {m: method_kind(c) for m, c in options.methods.items()},
            "protocol": {"degradation": options.degrade.describe(), "degrade_options": asdict(options.degrade),
                         "hr_crop": "HR cropped at the bottom/right to a multiple of the scale",
                         "hr_cropped_images": self.crops, "conventions": CONVENTIONS,
                         "correctness": self.correctness_implementation or _default_correctness()},
            "skipped_metrics": self.perceptual.skipped, "deterministic_methods": self.deterministic,
            "failures": [{"image": w, "message": m} for w, m in self.summary.failed],
            "versions": package_versions(), "python": platform.python_version(),
            "model_files": model_files_record(self.models, options.hash_models)
            if self.models is not None and self.models_ready else
            ({k: [str(p) for p in v] for k, v in self.models.files().items()} if self.models is not None else {}),
        }
        files = write_tables(options.output_dir, rows, metrics, provenance)
        if rows:
            files["chart"] = write_summary_chart(options.output_dir / "summary_chart.png", rows, metrics,
                                                 list(options.methods))
        return files


class EvalSink(Assembler):
    """Eval's scoring as the job loop's sink: each pair's samples scored and its record written (the resume point),
    the image's rows and sheet when its closing item arrives; a failed pair fails that pair only."""

    def __init__(self, evaluation: Evaluation) -> None:  # its own state, not an upscaling job's
        self.evaluation, self.summary, self.events = evaluation, evaluation.job, JobEvents()

    def take(self, item: EvalItem, value: dict | None) -> None:
        run, scene = self.evaluation, item.scene
        if item.kind == "image":
            scene.done = True
            run._close_image(scene)
            return
        record = run.score(scene, item.method, value["samples"], value["extra"])
        record.update(fingerprint=scene.expected[item.method], seconds=round(time.perf_counter() - value["started"], 3))
        write_text_atomic(scene.paths.pair(item.method), json.dumps(json_safe(record), indent=2,
                                                                     ensure_ascii=False) + "\n")
        scene.finished[item.method] = record
        scene.computed += 1
        run.summary.computed.append(f"{scene.image.image_id} {item.method}")
        run.events.pair_done(scene.image.image_id, item.method, skipped=False)

    def failed(self, item: EvalItem, cause: BaseException) -> None:
        run, scene = self.evaluation, item.scene
        if item.kind == "image":
            run._fail(f"{scene.image.image_id} sheet", str(cause), count=0)
            return
        run._fail(f"{scene.image.image_id} {item.method}", str(cause), count=1)
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRORS:
            self.summary.stopped = f"{cause}; evaluation stopped with {len(run.summary.computed)} pair(s) computed"


def _default_correctness() -> str:
    found = opensr_test_version()
    return f"opensr-test {found}" if found else "rsvl (opensr-test 1.3.3 definitions)"


def package_versions() -> dict[str, str | None]:
    """The installed versions of the packages that shape the numbers (None = not installed).

    torch is recorded as the running build reports itself (`torch.__version__`, local tag included: `+cpu`,
    `+cu130`), with its CUDA version: the numbers depend on the build, and package metadata may omit the tag.
    """
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["torch"] = str(torch.__version__)
    out["torch_cuda"] = torch.version.cuda
    return out


def run_evaluation(hr_dir: Path, options: EvalOptions, models: PipelineModels | None,
                   perceptual: PerceptualScorer, events: EvalEvents | None = None) -> EvalSummary:
    """Evaluate every method on every HR image of `hr_dir` into `options.output_dir` (see the module doc)."""
    return Evaluation(hr_dir, options, models, perceptual, events).run()
