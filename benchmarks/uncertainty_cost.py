"""What `--samples N` costs: time and peak memory of `rsvl upscale` for N = 1, 2, 4 side by side, with the
ratio to N = 1. Tiny random-weight models of every stage (`rsvl demo`'s), the bundled aerial sample, both
stages (caption made once, stage 1 and the refiner N times). Each case runs in its own process, so the peak
is that case's alone: CUDA memory allocated on a GPU, the process's peak RSS on a CPU (models included).
Times are the run record's stage seconds (models loaded before; the write of the output and layer excluded).

    python benchmarks/uncertainty_cost.py [--device cpu|cuda] [--samples 1,2,4] [--size 48] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png"


def run_case(source: Path, models: Path, out: Path, samples: int, device: str) -> dict:
    """One `rsvl upscale --samples N` in a fresh process -> its run record's seconds and peak memory."""
    args = [sys.executable, "-m", "rsvl_core", "upscale", str(source), "-o", str(out), "--scale", "2",
            "--models-dir", str(models), "--sampler", "ddim", "--steps", "4", "--refine-steps", "4",
            "--refine-min-size", "0", "--caption-max-tokens", "8", "--samples", str(samples), "--device", device,
            "-q", "--overwrite", "--no-hash"]
    subprocess.run(args, check=True, capture_output=True, text=True)
    record = json.loads((out / f"{source.stem}_x2.json").read_text())
    return {"samples": samples, "seconds": sum(record["seconds"].values()), "stages": record["seconds"],
            "peak_bytes": record["peak_memory_bytes"], "peak_kind": record["peak_memory_kind"],
            "mean_std": record.get("uncertainty", {}).get("mean_std")}


def median_run(runs: list[dict]) -> dict:
    """The run with the median total seconds (its stages and peak come with it)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def table(rows: list[dict]) -> str:
    """Markdown: N, seconds, x N=1, per-stage seconds, peak MiB, x N=1."""
    base = rows[0]
    lines = ["| N | seconds | x N=1 | stage 1 s | caption s | refine s | peak MiB | x N=1 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        stages = row["stages"]
        lines.append(f"| {row['samples']} | {row['seconds']:.2f} | {row['seconds'] / base['seconds']:.2f} | "
                     f"{stages.get('stage1', 0):.2f} | {stages.get('caption', 0):.2f} | {stages.get('refine', 0):.2f} "
                     f"| {row['peak_bytes'] / 2**20:.0f} | {row['peak_bytes'] / base['peak_bytes']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", default="1,2,4", help="comma-separated N values (the first is the baseline)")
    parser.add_argument("--size", type=int, default=48, help="input crop edge in pixels (output: twice that)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N, interleaved; the median is shown")
    parser.add_argument("--out", type=Path, default=None, help="also write uncertainty_cost.{json,md} here")
    args = parser.parse_args()
    from rsvl_core.demo import write_demo_models

    counts = [int(n) for n in args.samples.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_demo_models(root / "models")
        source = root / "aerial.png"
        Image.open(SAMPLE).convert("RGB").crop((0, 0, args.size, args.size)).save(source)
        runs: dict[int, list[dict]] = {n: [] for n in counts}
        for _ in range(args.repeat):  # interleaved: a busy spell of a shared machine hits every N alike
            for n in counts:
                runs[n].append(run_case(source, root / "models", root / f"out_{n}", n, args.device))
        rows = [median_run(runs[n]) for n in counts]
    kind = rows[0]["peak_kind"]
    text = (f"`--samples N` on {args.device}: {args.size}x{args.size} crop of the bundled aerial sample, x2, tiny "
            f"random models (both stages, 4 + 4 steps), peak = {kind}, median of {args.repeat} run(s)\n\n{table(rows)}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "uncertainty_cost.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / "uncertainty_cost.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
