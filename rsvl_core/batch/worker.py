"""The batch actor: loads the models once, then executes work items (the job API's `ItemExecutor`)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..jobs.inputs import JobOptions
from ..jobs.work import ItemExecutor
from ..kit.atomic import process_alive, this_host
from ..kit.devices import resolve_device
from ..pipeline.models import ModelFiles, PipelineModels
from ..pipeline.options import RunConfig
from .cluster import ClusterOptions


class SceneWorker:
    """One per GPU (or CPU slot). Everything it returns is plain data the driver can record."""

    def __init__(self, files: ModelFiles, config: RunConfig, options: JobOptions, model_files: dict,
                 cluster: ClusterOptions, threads: int, driver: tuple[str, int] | None = None) -> None:
        if driver is not None:
            watch_driver(*driver)
        if threads:
            torch.set_num_threads(threads)
        models = PipelineModels.from_files(files, resolve_device(cluster.device), cluster.dtype, cluster.placement,
                                           cluster.vae_dtype, cluster.acceleration, cluster.memory_plan)
        models.preload()  # a wrong weights file fails here, before any item
        self.executor = ItemExecutor(config, options, models, model_files)

    def describe(self) -> dict:
        """Where this actor runs: host, process and device (for the driver's per-actor table)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.executor.models.device)}

    def execute(self, kind: str, source: Path, target: Path, geotiff: bool, index: int = 0,
                caption: str | None = None) -> Any:
        """One work item (`WorkItem.call()`'s arguments) -> its plain result."""
        return self.executor.execute(kind, source, target, geotiff, index, caption)


def watch_driver(host: str, pid: int, interval: float = 2.0) -> threading.Thread | None:
    """End this actor's process soon after its driver is gone (killed with -9, so it could not stop its actors),
    rather than let it finish and write items nobody collects. Only a driver on this host can be watched (by its
    process id); on other hosts Ray ends a dead job's actors itself. Temp files left by the exit are removed by
    the next run (owner-tagged, `remove_stale_temporaries`)."""
    if host != this_host():
        return None

    def watch() -> None:
        while process_alive(host, pid):
            time.sleep(interval)
        os._exit(0)

    thread = threading.Thread(target=watch, name="rsvl-driver-watch", daemon=True)
    thread.start()
    return thread
