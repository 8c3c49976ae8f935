"""The batch actor: loads the models once, then executes work items (the job API's `ItemExecutor`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device
from ..pipeline.jobs import JobOptions
from ..pipeline.models import ModelFiles, PipelineModels
from ..pipeline.options import RunConfig
from ..pipeline.work import ItemExecutor
from .cluster import ClusterOptions


class SceneWorker:
    """One per GPU (or CPU slot). Everything it returns is plain data the driver can record."""

    def __init__(self, files: ModelFiles, config: RunConfig, options: JobOptions, model_files: dict,
                 cluster: ClusterOptions, threads: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        models = PipelineModels.from_files(files, resolve_device(cluster.device), cluster.dtype, cluster.placement,
                                           cluster.vae_dtype, cluster.acceleration)
        models.preload()  # a wrong weights file fails here, before any item
        self.executor = ItemExecutor(config, options, models, model_files)

    def describe(self) -> dict:
        """Where this actor runs: host, process and device (for the driver's per-actor table)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.executor.models.device)}

    def execute(self, kind: str, source: Path, target: Path, geotiff: bool, index: int = 0,
                caption: str | None = None) -> Any:
        """One work item (`WorkItem.call()`'s arguments) -> its plain result."""
        return self.executor.execute(kind, source, target, geotiff, index, caption)
