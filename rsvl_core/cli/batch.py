"""`rsvl batch`: the flags of `rsvl upscale` plus the cluster's -> `batch.run_batch` on Ray actors."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..kit.errors import RsvlError
from .bars import say
from .commands import COMMANDS
from .upscale import add_job_arguments, add_memory_flag, checked_run, planned_config


def add_batch_parser(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser("batch", help=COMMANDS["batch"],
                           description="Upscale many images, and large scenes window by window, on a Ray cluster: "
                                       "one actor per GPU (or CPU actors), models loaded once per actor. Inputs, "
                                       "outputs and model files must be on storage every node sees.")
    add_job_arguments(batch)
    add_memory_flag(batch)
    group = batch.add_argument_group("cluster (Ray)")
    group.add_argument("--ray", default=None, metavar="auto|HOST:PORT",
                       help="auto: the Ray cluster running on this machine, else a new local one (its GPUs, or CPU "
                            "actors); HOST:PORT: join the cluster `ray start --head` started (required: without Ray "
                            "use `rsvl upscale`)")
    group.add_argument("--actors", type=int, default=None,
                       help="number of actors (default: one per GPU; without GPUs, CPUs / --cpus-per-actor)")
    group.add_argument("--cpus-per-actor", type=int, default=1,
                       help="CPU cores (and torch threads) of each CPU actor (default 1)")
    group.add_argument("--retries", type=int, default=2,
                       help="times an item is run again after its actor died (killed, out of memory); default 2")


def run_batch_command(args: argparse.Namespace):
    config, options, acceleration = checked_run(args)  # before Ray and the engine load
    from ..batch import ClusterOptions, run_batch
    from ..batch.cluster import RAY_HINT
    from ..jobs.inputs import collect_inputs, locate_model_files
    from .progress import BatchBars

    if args.ray is None:
        raise RsvlError(RAY_HINT)
    inputs = [*args.inputs, *args.input_img, *args.image_dir]
    sources = collect_inputs(inputs, args.recursive)  # a missing input fails first
    config, plan = planned_config(config, sources, options.scene.windows.size)  # --max-vram, for every actor
    cluster = ClusterOptions(args.ray, args.actors, args.cpus_per_actor, args.retries, args.device, args.dtype,
                             args.placement, args.vae_dtype, acceleration, plan)
    cluster.check()
    files = locate_model_files(config, args.models_dir, args.stage1_model, args.sdxl, args.supir, notify=say,
                               captioner=args.llava, adapter=args.adapter, ckpt_dir=args.ckpt_pth,
                               comfyui_dir=args.comfyui_dir)
    files = type(files)(*(None if f is None else Path(f).resolve() for f in (  # absolute: actors have other cwds
        files.stage1, files.captioner, files.adapter, files.sdxl, files.supir)))
    options = replace(options, output_dir=options.output_dir.resolve())
    inputs = [Path(i).resolve() for i in inputs]
    summary = run_batch(inputs, config, files, options, cluster, BatchBars(args.quiet, config.scale))
    print_actor_table(summary)
    return summary


def print_actor_table(summary) -> None:
    """Per-actor throughput: where it ran, items, output megapixels, busy seconds, Mpx/s."""
    if not summary.actors:
        return
    print(f"{'actor':<6} {'host':<16} {'device':<8} {'items':>5} {'Mpx':>8} {'busy s':>8} {'Mpx/s':>7}",
          file=sys.stderr)
    for n, a in enumerate(summary.actors):
        rate = a.pixels / 1e6 / a.seconds if a.seconds else 0.0
        print(f"{n:<6} {a.where['host'][:16]:<16} {a.where['device']:<8} {a.items:>5} {a.pixels / 1e6:>8.3f} "
              f"{a.seconds:>8.1f} {rate:>7.3f}" + (f"  ({a.deaths} death(s))" if a.deaths else ""), file=sys.stderr)
    print(f"wall {summary.seconds:.1f} s; {summary.retried} item(s) retried after an actor died", file=sys.stderr)
