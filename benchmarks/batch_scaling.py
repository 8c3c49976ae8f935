"""`rsvl batch` throughput with 1, 2, ... actors on this machine, side by side in one Ray session.

Same inputs, same settings, fresh output folder per row; tiny demo models (random weights), stage 1 only by
default, so the number is the batch machinery's scaling (actors, dispatch, transport, writes), not model quality.
On a CPU machine each actor gets `--cpus-per-actor` cores: with 2 cores, 2 actors of 1 core vs 1 actor of 1 core.

    python benchmarks/batch_scaling.py [--images 8] [--size 48] [--steps 20] [--actors 1,2] [--full]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from PIL import Image


def make_inputs(folder: Path, count: int, size: int) -> Path:
    from rsvl_core.demo import SAMPLE_IMAGE

    sample = Image.open(SAMPLE_IMAGE).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        x, y = (n * 7) % max(1, sample.width - size), (n * 5) % max(1, sample.height - size)
        sample.crop((x, y, x + size, y + size)).save(folder / f"scene{n:03d}.png")
    return folder


def run(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=48, help="input pixels a side")
    parser.add_argument("--steps", type=int, default=20, help="stage-1 ddim steps")
    parser.add_argument("--actors", default="1,2", help="actor counts to compare, e.g. 1,2")
    parser.add_argument("--full", action="store_true", help="all three stages (tiny captioner and refiner too)")
    args = parser.parse_args(argv)

    import ray
    import torch

    from rsvl_core.batch import ClusterOptions, run_batch
    from rsvl_core.demo import demo_config, write_demo_models
    from rsvl_core.jobs.inputs import JobOptions, locate_model_files
    from rsvl_core.pipeline import stage1_options_from

    counts = [int(c) for c in args.actors.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsvl-batch-bench-") as scratch:
        scratch = Path(scratch)
        write_demo_models(scratch / "models")
        inputs = make_inputs(scratch / "in", args.images, args.size)
        config = demo_config()
        fast = stage1_options_from({"stage1_sampler": "ddim", "stage1_steps": args.steps})
        config = type(config)(scale=config.scale, seed=0, stage1=fast, caption=config.caption,
                              refine=config.refine if args.full else None)
        files = locate_model_files(config, scratch / "models")
        ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            for count in counts:
                options = JobOptions(scratch / f"out{count}", hash_models=False)
                start = time.perf_counter()
                summary = run_batch([inputs], config, files, options, ClusterOptions(actors=count, device="cpu"))
                wall = time.perf_counter() - start
                assert len(summary.written) == args.images, summary.failed
                rows.append({"actors": count, "images": args.images, "wall_s": round(wall, 2),
                             "compute_s": round(summary.seconds, 2),
                             "images_per_s": round(args.images / summary.seconds, 3),
                             "busy_s": [round(a.seconds, 2) for a in summary.actors]})
        finally:
            ray.shutdown()
    base = rows[0]["images_per_s"]
    print(f"{args.images} images {args.size}x{args.size} x{config.scale}, "
          f"{'full pipeline' if args.full else 'stage 1 only'}, ddim {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads in the driver")
    print(f"{'actors':>6} {'images/s':>9} {'speed-up':>9} {'dispatch->done s':>17} {'with actor start s':>19}")
    for row in rows:
        print(f"{row['actors']:>6} {row['images_per_s']:>9.3f} {row['images_per_s'] / base:>8.2f}x "
              f"{row['compute_s']:>17.2f} {row['wall_s']:>19.2f}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    run()
