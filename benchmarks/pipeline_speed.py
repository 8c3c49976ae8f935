"""Whole-pipeline speed on one device: every mode in one run, one table (issue 15).

    python3 benchmarks/pipeline_speed.py --smoke            # tiny random models on the CPU, seconds (CI runs it)
    python3 benchmarks/pipeline_speed.py --full --out DIR   # full-size random-weight models in bf16 on CUDA

Modes (rows): `seed-equivalent` (the seed's way: faithful 500-step SR3 in fp32, fp16 captioner and refiner,
the seed's step cache evaluated the seed's way - control net before every decision and again on a computed
step -, eager), `paper` (our defaults), `fast` (our fastest settings: DPM-Solver++ 20 steps for SR3, the
`fast` step cache, every switch on but fp8), `low-memory` (paper + fp8 weights), and `paper + <switch>` for
each switch of `rsvl_core.pipeline.Acceleration`, which measures only the stages that switch touches (the
others are paper's, marked `=`).

Per stage: the median of `--repeats` timed runs after one warm-up (CUDA events on CUDA, which also holds
compilation and graph capture), the work in TFLOP (counted by torch's FlopCounterMode in an eager run with
the same settings: compiled or graphed modes do the same work), the fraction of the bf16 matmul rate
measured first, and the peak memory with only that stage's weights on the device (sequential placement:
the stage's own weights plus what it allocates on top of everything resident before it; the other
models stay resident here to save transfer time).
Random weights: the work and the time are real; the images mean nothing (and the captioner may stop early
if a random model emits its end token: the caption column counts the tokens it generated).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cache import SeedCostNetworks  # noqa: E402 - the seed's evaluation pattern, shared with that benchmark

from rsvl_core.cache import PRESETS  # noqa: E402
from rsvl_core.caption.config import CaptionOptions  # noqa: E402
from rsvl_core.pipeline.acceleration import Acceleration, accelerate_stage  # noqa: E402
from rsvl_core.pipeline.models import module_bytes, parts  # noqa: E402
from rsvl_core.refine import refiner as refiner_module  # noqa: E402
from rsvl_core.refine.options import PRESETS as REFINE_PRESETS  # noqa: E402
from rsvl_core.refine.refiner import Refiner, refine_image  # noqa: E402
from rsvl_core.stage1 import Stage1Options  # noqa: E402
from rsvl_core.stage1.loader import SR3Model  # noqa: E402
from rsvl_core.stage1.stage import SR3Stage1  # noqa: E402

STAGES = ("stage1", "caption", "refine")
SWITCH_STAGES = {"compile": ("stage1", "refine"), "cuda_graphs": ("stage1",), "static_cache": ("caption",),
                 "channels_last": ("stage1", "refine"), "fp8": ("refine",)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# 1. sizes and modes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    """What one image costs: the paper's configuration (`full`) or a CPU-sized copy of it (`smoke`)."""

    name: str
    input_px: int
    scale: int
    sr3_steps: int
    caption_tokens: int
    refine_steps: int
    min_size: int
    dtype: str


FULL = Size("full", input_px=28, scale=8, sr3_steps=500, caption_tokens=256, refine_steps=50, min_size=1024,
            dtype="bf16")
SMOKE = Size("smoke", input_px=8, scale=8, sr3_steps=12, caption_tokens=8, refine_steps=4, min_size=0, dtype="fp32")


@dataclass(frozen=True)
class Mode:
    name: str
    acceleration: Acceleration = field(default_factory=Acceleration)
    stages: tuple[str, ...] = STAGES          # measured; the rest are taken from `paper`
    sr3_dtype: str | None = None               # None: the size's dtype
    net_dtype: str | None = None               # captioner and refiner; None: the size's dtype
    sr3_sampler: str = "faithful"
    sr3_steps: int | None = None               # None: the size's
    cache: str = "off"
    seed_cost: bool = False
    work_like: str | None = None               # a mode doing the same work (FLOPs are counted there, eagerly)


def modes(size: Size, backend: str | None) -> list[Mode]:
    """Every row, cheapest first for compilation; `backend` is torch.compile's (None = inductor)."""
    low = "fp16" if size.name == "full" else "fp32"
    rows = [Mode("seed-equivalent", sr3_dtype="fp32", net_dtype=low, cache="seed", seed_cost=True),
            Mode("paper")]
    for switch, stages in SWITCH_STAGES.items():
        accel = replace(Acceleration(compile_backend=backend), **{switch: True})
        name = "low-memory (paper + fp8)" if switch == "fp8" else f"paper + {switch.replace('_', '-')}"
        rows.append(Mode(name, accel, stages, work_like=None if switch == "fp8" else "paper"))
    fast = Acceleration.all_on(fp8=False, compile_backend=backend)
    rows.append(Mode("fast", fast, sr3_sampler="dpmpp", sr3_steps=20, cache="fast", work_like="fast (eager work)"))
    return rows


# 2. models -----------------------------------------------------------------------------------------
@dataclass
class Models:
    stage1: SR3Stage1
    captioner: object
    refiner: Refiner


def tiny_models(device: torch.device) -> Models:
    """The demo's tiny random models (what `rsvl demo` writes), built in memory."""
    from rsvl_core.caption.captioner import Captioner
    from rsvl_core.caption.tiny import tiny_llava_next, tiny_llava_next_processor
    from rsvl_core.pipeline.tiny import TINY_SR3_CONFIG
    from rsvl_core.refine.tiny import tiny_refiner
    from rsvl_core.stage1 import SR3UNet

    torch.manual_seed(0)
    stage1 = SR3Stage1(SR3Model(SR3UNet(TINY_SR3_CONFIG).eval().to(device)))
    return Models(stage1, Captioner(tiny_llava_next(0).to(device), tiny_llava_next_processor()),
                  tiny_refiner(0).to(device))


def full_models(device: torch.device, dtype: torch.dtype) -> Models:
    """Full-size random-weight models from the real configs (`rsvl_core.pipeline.full_size`, shared with the
    memory estimator)."""
    from rsvl_core.pipeline.full_size import full_captioner, full_refiner, full_stage1

    torch.manual_seed(0)
    return Models(full_stage1(device, dtype), full_captioner(device, dtype), full_refiner(device, dtype))


def models_for(mode: Mode, base: Models, size: Size) -> Models:
    """`base` in the mode's dtypes, copied where the mode changes modules in place; switches applied."""
    sr3_dtype = DTYPES[mode.sr3_dtype or size.dtype]
    net_dtype = DTYPES[mode.net_dtype or size.dtype]
    touches = bool(mode.acceleration.enabled())
    unet = base.stage1.model.unet
    if touches or next(unet.parameters()).dtype != sr3_dtype:
        unet = copy.deepcopy(unet).to(sr3_dtype)
    stage1 = SR3Stage1(SR3Model(unet))
    refiner, captioner = base.refiner, base.captioner
    if touches or refiner.dtype != net_dtype:
        vae_dtype = torch.float32 if net_dtype == torch.float16 else net_dtype  # SDXL's VAE overflows in fp16
        refiner = Refiner(copy.deepcopy(refiner.unet).to(net_dtype), copy.deepcopy(refiner.control).to(net_dtype),
                          copy.deepcopy(refiner.vae).to(vae_dtype), refiner.text.to(net_dtype), refiner.config)
    if captioner.dtype != net_dtype:
        captioner.model.to(net_dtype)
    captioner.static_cache = False
    models = Models(stage1, captioner, refiner)
    for name, model in (("stage1", stage1), ("caption", captioner), ("refine", refiner)):
        accelerate_stage(name, model, mode.acceleration)
    return models


# 3. measuring ----------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Drop what a finished mode holds (compiled code keeps its modules alive) before the next one."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_ceilings(device: torch.device) -> dict[str, float]:
    """The card's bf16 matmul rate (TFLOP/s, random data) and copy bandwidth (GB/s, bytes read + written)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    matmul = median_seconds(lambda: a @ b, device, repeats=10)
    src = torch.randn(2**28 if device.type == "cuda" else 2**22, device=device)
    dst = torch.empty_like(src)
    copy_s = median_seconds(lambda: dst.copy_(src), device, repeats=10)
    return {"matmul_tflops": 2 * n**3 / matmul / 1e12, "matmul_dtype": str(dtype).split(".")[-1],
            "copy_gbps": 2 * src.numel() * src.element_size() / copy_s / 1e9}


def timed(fn, device: torch.device):
    """(seconds, result) of fn(): CUDA events on CUDA, the host clock elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, result
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    synchronize(device)
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


@contextlib.contextmanager
def seed_cost(enabled: bool):
    """The seed's evaluation pattern inside refine_image (its ControlWrapper runs the control net before every
    cache decision, and again on computed steps)."""
    if not enabled:
        yield
        return
    original = refiner_module.ConditionedNetworks
    refiner_module.ConditionedNetworks = SeedCostNetworks
    try:
        yield
    finally:
        refiner_module.ConditionedNetworks = original


def run_configs(mode: Mode, size: Size):
    """(SR3 options, caption options, refine options) of a mode at a size."""
    steps = mode.sr3_steps or size.sr3_steps
    stage1 = Stage1Options(sampler=mode.sr3_sampler, steps=steps, tile_size=224)
    caption = CaptionOptions(seed=0, max_new_tokens=size.caption_tokens)
    base = REFINE_PRESETS["paper"]
    refine = replace(base, sampler=replace(base.sampler, steps=size.refine_steps), min_size=size.min_size,
                     cache=PRESETS[mode.cache])
    return stage1, caption, refine


def stage_calls(models: Models, mode: Mode, size: Size, image: torch.Tensor) -> dict:
    """The three stages as calls, each taking the previous one's output (a dict carried between them)."""
    stage1_options, caption_options, refine_options = run_configs(mode, size)
    tokens = []

    def count(step, total, stage, preview=None):
        tokens.append(step)

    def stage1(state):
        state["stage1"] = models.stage1.upscale(image, size.scale, stage1_options, 0).image
        return state

    def caption(state):
        tokens.clear()
        state["caption"] = models.captioner.caption(state["stage1"], caption_options, count)[0]
        state["tokens"] = max(tokens[:-1] or [0])  # the last report is the final "done" one
        return state

    def refine(state):
        with seed_cost(mode.seed_cost):
            state["image"], report = refine_image(models.refiner, state["stage1"], state["caption"], refine_options, 0)
        state["refiner_steps_computed"] = len(report.cache.computed_steps) if report.cache else None
        return state

    return {"stage1": stage1, "caption": caption, "refine": refine}


def stage_weights(models: Models) -> dict[str, int]:
    return {"stage1": module_bytes(models.stage1.model.unet),
            "caption": module_bytes(*parts(models.captioner)), "refine": module_bytes(*parts(models.refiner))}


def run_mode(mode: Mode, base: Models, size: Size, image: torch.Tensor, device: torch.device, repeats: int,
             count_flops: bool) -> dict:
    """Warm-up (FLOPs counted there when eager), then `repeats` timed runs of the mode's stages."""
    models = models_for(mode, base, size)
    calls = stage_calls(models, mode, size, image)
    weights = stage_weights(models)
    result = {"mode": mode.name, "switches": mode.acceleration.enabled(), "stages": {}}
    state = {"stage1": None}
    if "stage1" not in mode.stages:
        state = calls["stage1"](state)  # the input of the stages measured here
    for stage in STAGES:
        if stage not in mode.stages:
            if stage == "caption":
                state = calls["caption"](state)
            continue
        flops = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
        warm_start = time.perf_counter()
        with flops:
            state = calls[stage](dict(state))
        synchronize(device)
        warm = time.perf_counter() - warm_start
        seconds, peaks = [], []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)  # every resident model (and copies of other modes)
            elapsed, state = timed(lambda stage=stage, state=state: calls[stage](dict(state)), device)
            seconds.append(elapsed)
            if device.type == "cuda":  # the stage's own weights + what it allocated on top: a sequential peak
                peaks.append(torch.cuda.max_memory_allocated(device) - before + weights[stage])
        result["stages"][stage] = {"seconds": statistics.median(seconds), "all_seconds": seconds,
                                   "warmup_seconds": warm, "peak_bytes": max(peaks) if peaks else None,
                                   "tflop": flops.get_total_flops() / 1e12 if count_flops else None}
    result["caption_tokens"] = state.get("tokens")
    result["refiner_steps_computed"] = state.get("refiner_steps_computed")
    return result


# 4. the table ----------------------------------------------------------------------------------------
def complete(results: list[dict], rows: list[Mode], ceilings: dict) -> list[dict]:
    """Fill inherited stages (from paper) and work (from the eager mode doing the same work); derived columns."""
    by_name = {r["mode"]: r for r in results}
    paper = by_name.get("paper")
    for row, result in zip(rows, results, strict=False):
        stages = result["stages"]
        for stage in STAGES:
            if stage not in stages and paper is not None:
                stages[stage] = {**paper["stages"][stage], "inherited": True}
        like = by_name.get(row.work_like) if row.work_like else None
        for stage, entry in stages.items():
            if entry.get("tflop") is None and like is not None and stage in like["stages"]:
                entry["tflop"] = like["stages"][stage]["tflop"]
        total = sum(e["seconds"] for e in stages.values())
        work = [e["tflop"] for e in stages.values()]
        result["total_seconds"] = total
        result["total_tflop"] = sum(work) if all(w is not None for w in work) else None
        peaks = [e["peak_bytes"] for e in stages.values() if e.get("peak_bytes") is not None]
        result["peak_bytes"] = max(peaks) if peaks else None
        for entry in stages.values():
            if entry.get("tflop") is not None:
                entry["rate_fraction"] = entry["tflop"] / entry["seconds"] / ceilings["matmul_tflops"]
    seed = by_name.get("seed-equivalent")
    for result in results:
        result["speedup"] = seed["total_seconds"] / result["total_seconds"] if seed else None
    return results


def markdown_table(results: list[dict], header: dict) -> str:
    """The results as a Markdown table (the same text is printed last)."""
    lines = [f"Pipeline speed, {header['size']} ({header['device']}, torch {header['torch']}, {header['date']}); "
             f"ceilings: {header['ceilings']['matmul_tflops']:.1f} TFLOP/s {header['ceilings']['matmul_dtype']} "
             f"matmul, {header['ceilings']['copy_gbps']:.0f} GB/s copy. `=`: taken from paper.", "",
             "| mode | SR3 s | caption s (tokens) | refine s | total s | TFLOP | refine % of matmul | "
             "total % | peak GB (seq.) | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["stages"]

        def sec(stage: str, s=s) -> str:
            return f"{s[stage]['seconds']:.2f}{'=' if s[stage].get('inherited') else ''}"

        refine_frac = s["refine"].get("rate_fraction")
        total_frac = (r["total_tflop"] / r["total_seconds"] / header["ceilings"]["matmul_tflops"]
                      if r["total_tflop"] is not None else None)
        lines.append(
            f"| {r['mode']} | {sec('stage1')} | {sec('caption')} ({r.get('caption_tokens')}) | {sec('refine')} | "
            f"{r['total_seconds']:.2f} | {_num(r['total_tflop'], '.3f')} | {_pct(refine_frac)} | {_pct(total_frac)} | "
            f"{_num(r['peak_bytes'] and r['peak_bytes'] / 2**30, '.1f')} | {_num(r['speedup'], '.2f', 'x')} |")
    return "\n".join(lines)


def _num(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


# 5. the run --------------------------------------------------------------------------------------------
def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def benchmark(size: Size, device: torch.device, repeats: int, budget_s: float, backend: str | None) -> tuple:
    """Every mode that fits in `budget_s` (the rest are reported as skipped); returns (results, header)."""
    started = time.perf_counter()
    torch.set_grad_enabled(False)
    ceilings = measure_ceilings(device)
    base = full_models(device, DTYPES[size.dtype]) if size.name == "full" else tiny_models(device)
    image = torch.rand(1, 3, size.input_px, size.input_px, generator=torch.Generator().manual_seed(0))
    rows, results, skipped = modes(size, backend), [], []
    eager_fast = Mode("fast (eager work)", sr3_sampler="dpmpp", sr3_steps=20, cache="fast")
    for mode in rows[:-1] + [eager_fast, rows[-1]]:
        if time.perf_counter() - started > budget_s:
            skipped.append(mode.name)
            continue
        count = mode.work_like is None
        results.append(run_mode(mode, base, size, image, device, repeats, count))
        release(device)
        print(f"  {mode.name}: {sum(s['seconds'] for s in results[-1]['stages'].values()):.2f} s measured "
              f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    done = {r["mode"] for r in results}
    shown = [m for m in rows if m.name in done]
    work_only = [r for r in results if r["mode"] == "fast (eager work)"]
    table_results = [r for r in results if r["mode"] != "fast (eager work)"]
    complete(work_only + table_results, [eager_fast] * len(work_only) + shown, ceilings)
    header = {"size": size.name, "device": describe_device(device), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "ceilings": ceilings, "skipped": skipped,
              "compile_backend": backend or "inductor", "repeats": repeats,
              "seconds_total": time.perf_counter() - started}
    return table_results, header


def write_outputs(out: Path | None, results: list[dict], header: dict, table: str) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pipeline_speed_{header['size']}.json").write_text(json.dumps({"header": header, "modes": results},
                                                                          indent=2))
    (out / f"pipeline_speed_{header['size']}.md").write_text(table + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--smoke", action="store_true", help="tiny random models on the CPU (seconds)")
    which.add_argument("--full", action="store_true", help="full-size random-weight models, bf16, on CUDA")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and Markdown results")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per stage (default 2 full, 1 smoke)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new mode after this many seconds (default 420 full: the 8-minute window)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default: inductor for --full, eager for --smoke)")
    args = parser.parse_args(argv)
    size = FULL if args.full else SMOKE
    device = torch.device("cuda" if args.full else "cpu")
    if args.full and not torch.cuda.is_available():
        parser.error("--full needs CUDA; use --smoke on a CPU")
    backend = args.compile_backend or (None if args.full else "eager")
    results, header = benchmark(size, device, args.repeats or (2 if args.full else 1),
                                args.budget_s or (420.0 if args.full else 600.0), backend)
    table = markdown_table(results, header)
    write_outputs(args.out, results, header, table)
    if header["skipped"]:
        print(f"skipped for time: {', '.join(header['skipped'])}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
