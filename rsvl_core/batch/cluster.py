"""Join (or start) a Ray cluster and size the actor pool: one actor per GPU, or CPU actors on a CPU cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..kit.errors import RsvlError
from ..pipeline.acceleration import Acceleration

if TYPE_CHECKING:
    from ..memory.plan import MemoryPlan

RAY_HINT = ("rsvl batch runs on Ray: pass --ray auto (start Ray on this machine: its GPUs, or CPU actors) or "
            "--ray HOST:PORT (join a cluster started with `ray start --head`); for one process without Ray use "
            "`rsvl upscale`. Ray is in the [batch] extra: pip install 'rsvl[batch]'")


@dataclass(frozen=True)
class ClusterOptions:
    """Where the actors run and how many there are.

    address: "auto" joins the Ray cluster running on this machine (`ray start`), else starts a local one (every
        local GPU, or the CPUs) that listens on 127.0.0.1 only; "HOST:PORT" joins that cluster.
    actors: how many actors (default: one per GPU in the cluster; without GPUs, CPUs // cpus_per_actor).
    cpus_per_actor: CPU cores (and torch threads) per CPU actor.
    retries: how often an item whose actor died (killed, out of memory) is tried again on another actor.
    """

    address: str = "auto"
    actors: int | None = None
    cpus_per_actor: int = 1
    retries: int = 2
    device: str = "auto"
    dtype: str = "fp32"
    placement: str = "auto"
    vae_dtype: str | None = None
    acceleration: Acceleration = field(default_factory=Acceleration)  # compile, fp8, ... (as --accelerate)
    memory_plan: MemoryPlan | None = None  # --max-vram: each actor places and stores its models by this plan

    def check(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise RsvlError(f"--actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor < 1:
            raise RsvlError(f"--cpus-per-actor must be >= 1, got {self.cpus_per_actor}")
        if self.retries < 0:
            raise RsvlError(f"--retries must be >= 0, got {self.retries}")


LOOPBACK = "127.0.0.1"
# Ray's own switch for a cluster of one machine: read when ray is imported, by this process and by every process
# Ray starts (they inherit the environment); with it the node address stays loopback, so the GCS, the raylet, the
# object manager and each worker listen on 127.0.0.1 and nothing on an external interface.
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def import_ray(local_only: bool = False):
    """The ray module; `local_only` sets Ray's single-machine switch first (it only counts before the import)."""
    if local_only:
        for name, value in LOCAL_ONLY_ENV.items():
            os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError:
        raise RsvlError(RAY_HINT) from None
    return ray


def connect(options: ClusterOptions):
    """Ray, initialised: reused when this process already is a driver, else started (on loopback) or joined."""
    ray = import_ray(local_only=options.address == "auto")
    if ray.is_initialized():
        return ray
    if options.address == "auto":
        ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False, configure_logging=False)
        host = ray.get_runtime_context().gcs_address.rpartition(":")[0]
        if host != LOOPBACK:  # ray was imported before the switch was set: its servers listen beyond loopback
            ray.shutdown()
            raise RsvlError(f"--ray auto: the local Ray came up on {host}, not {LOOPBACK}; set "
                            + " ".join(f"{k}={v}" for k, v in LOCAL_ONLY_ENV.items())
                            + " before Ray is imported (or pass --ray HOST:PORT to join a cluster)")
    else:
        try:
            ray.init(address=options.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RsvlError(f"--ray {options.address}: cannot join the Ray cluster ({exc}); start one with "
                            "`ray start --head` and pass the address it prints") from None
    return ray


@dataclass(frozen=True)
class ActorPlan:
    count: int
    num_gpus: int   # per actor: 1 on a GPU cluster, else 0
    num_cpus: int   # per actor


def plan_actors(options: ClusterOptions, resources: dict[str, float]) -> ActorPlan:
    """One actor per GPU (num_gpus=1) when the cluster has GPUs and the device allows; CPU actors otherwise."""
    gpus = int(resources.get("GPU", 0)) if options.device in ("auto", "cuda") else 0
    if gpus:
        return ActorPlan(options.actors or gpus, 1, 1)
    if options.device == "cuda":
        raise RsvlError("--device cuda: the Ray cluster has no GPUs")
    cpus = int(resources.get("CPU", 1))
    return ActorPlan(options.actors or max(1, cpus // options.cpus_per_actor), 0, options.cpus_per_actor)
