"""The batch actor: loads the models once, then runs whole images, scene captions and windows (job API calls)."""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from pathlib import Path

import torch

from ..devices import resolve_device
from ..pipeline.jobs import (
    JobOptions,
    SilentEvents,
    open_input,
    run_window,
    scene_caption,
    upscale_to,
)
from ..pipeline.models import ModelFiles, PipelineModels
from ..pipeline.options import RunConfig
from ..scene import plan_windows
from ..scene_io import SceneSource
from .cluster import ClusterOptions

OPEN_SCENES = 2  # scenes an actor keeps open (their stretch computed once): windows of one scene arrive together


class SceneWorker:
    """One per GPU (or CPU slot). Everything it returns is plain data the driver can record."""

    def __init__(self, files: ModelFiles, config: RunConfig, options: JobOptions, model_files: dict,
                 cluster: ClusterOptions, threads: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.config, self.options, self.model_files = config, options, model_files
        self.models = PipelineModels.from_files(files, resolve_device(cluster.device), cluster.dtype,
                                                cluster.placement, cluster.vae_dtype, cluster.acceleration)
        self.models.preload()  # a wrong weights file fails here, before any item
        self.scenes: OrderedDict[Path, SceneSource] = OrderedDict()

    def describe(self) -> dict:
        """Where this actor runs: host, process and device (for the driver's per-actor table)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.models.device)}

    def whole(self, source: Path, target: Path, geotiff: bool) -> dict:
        """One input -> its output and run record (written atomically by this actor)."""
        start = time.perf_counter()
        record = upscale_to(source, target, geotiff, self.config, self.models, self.options, self.model_files,
                            SilentEvents())
        return {"record": record, "seconds": time.perf_counter() - start}

    def caption(self, source: Path, geotiff: bool) -> str | None:
        """The caption every window of this scene shares (from a downsampled overview), or None."""
        scene = self._scene(source, geotiff)
        return scene_caption(scene, self.config, self.models, self.options.scene.windows)

    def window(self, source: Path, geotiff: bool, index: int, caption: str | None) -> dict:
        """Window `index` of a scene (in `plan_windows` order): its output image and run record."""
        start = time.perf_counter()
        scene = self._scene(source, geotiff)
        tile = plan_windows(scene.height, scene.width, self.options.scene.windows, self.config.scale)[index]
        image, record = run_window(scene, tile, self.config, self.models, None, caption)
        return {"image": image, "record": record, "seconds": time.perf_counter() - start}

    def _scene(self, source: Path, geotiff: bool) -> SceneSource:
        if source not in self.scenes:
            self.scenes[source] = open_input(source, geotiff, self.options.scene)
            while len(self.scenes) > OPEN_SCENES:
                self.scenes.popitem(last=False)
        self.scenes.move_to_end(source)
        return self.scenes[source]
