"""Memory plans measured (issue 26): per stage, the peak `--max-vram 12G` / `8G` predicts next to the peak the
same stage reaches, and seconds per image.

    python3 benchmarks/memory_budget.py --full --out DIR    # full-size random-weight models, bf16, on CUDA
    python3 benchmarks/memory_budget.py --smoke            # tiny models on the CPU (seconds; CI keeps it alive)

For each budget: the plan (`rsvl_core.memory.plan`) for the paper's input (28 px, 8x SR3, refine at
1024², 256 caption tokens), the models built with random weights and stored as the plan says (captioner fp8 /
int4, refiner fp8), placed by the plan's placement (block swap when it chose one), then each stage run once
as the pipeline runs it. Measured per stage: `torch.cuda.max_memory_allocated` from just before the stage's
weights come to the device until after it ran (sequential: what the stage alone needs; the prediction counts
the same). `--smoke` measures with the estimator's own storage tracker on the CPU instead (tiny models, the
plan's storage applied; predictions from the same tiny models), so the script is exercised without a GPU.
SR3 runs DPM-Solver++ with `--sr3-steps` (default 20) and the refiner `--refine-steps` (default 50): memory
does not depend on the step count; the seconds are for those settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from rsvl_core.caption.config import CaptionOptions
from rsvl_core.memory.estimate import Estimator, GiB, StorageTracker, apply_storage, weight_bytes, weights_of
from rsvl_core.memory.plan import MemoryPlan, plan_memory
from rsvl_core.pipeline.options import RunConfig
from rsvl_core.refine.refiner import refine_image

BUDGETS = ("12G", "8G")
STAGES = ("stage1", "caption", "refine")


def build_models(full: bool, dtype: torch.dtype) -> dict:
    """Random-weight stage models on the CPU: full size from the real configs, or the demo's tiny ones."""
    if full:
        from rsvl_core.pipeline.full_size import full_captioner, full_refiner, full_stage1

        models = {"stage1": full_stage1("meta", dtype), "caption": full_captioner("meta", dtype),
                  "refine": full_refiner("meta", dtype)}
        generator = torch.Generator().manual_seed(0)
        for stage, model in models.items():
            for module in (model.modules() if stage != "stage1" else {"unet": model.model.unet}).values():
                module.to_empty(device="cpu")
                for tensor in (*module.parameters(), *module.buffers()):
                    if tensor.is_floating_point():
                        tensor.data.normal_(0, 0.02, generator=generator)
        return models
    from rsvl_core.caption.captioner import Captioner
    from rsvl_core.caption.tiny import tiny_llava_next, tiny_llava_next_processor
    from rsvl_core.pipeline.tiny import TINY_SR3_CONFIG
    from rsvl_core.refine.tiny import tiny_refiner
    from rsvl_core.stage1 import SR3UNet
    from rsvl_core.stage1.loader import SR3Model
    from rsvl_core.stage1.stage import SR3Stage1

    torch.manual_seed(0)
    return {"stage1": SR3Stage1(SR3Model(SR3UNet(TINY_SR3_CONFIG).eval().requires_grad_(False))),
            "caption": Captioner(tiny_llava_next(0), tiny_llava_next_processor()), "refine": tiny_refiner(0)}


def run_config(budget: str, full: bool, sr3_steps: int, refine_steps: int) -> RunConfig:
    values = dict(dtype="bf16" if full else "fp32", max_vram=budget, stage1_sampler="dpmpp",
                  stage1_steps=sr3_steps, refine_steps=refine_steps, caption_max_tokens=256 if full else 8)
    if not full:
        values.update(min_size=0, latent_tile_size=0, tile_size=32, tile_overlap=16)
    return RunConfig.from_values(**values)


def stage_calls(models: dict, config: RunConfig, image: torch.Tensor) -> dict:
    caption = replace(config.caption, do_sample=False) if config.caption else CaptionOptions(do_sample=False)

    def stage1(state):
        state["stage1"] = models["stage1"].upscale(image, config.scale, config.stage1, 0).image

    def captioned(state):
        state["caption"] = models["caption"].caption(state["stage1"], caption)[0]

    def refine(state):
        state["image"] = refine_image(models["refine"], state["stage1"], state["caption"], config.refine, 0)[0]

    return {"stage1": stage1, "caption": captioned, "refine": refine}


def measure_plan(plan: MemoryPlan, config: RunConfig, full: bool) -> dict:
    """Run each stage as the plan places it; the measured peak per stage beside the predicted one."""
    device = torch.device("cuda" if full else "cpu")
    dtype = torch.bfloat16 if full else torch.float32
    models = build_models(full, dtype)
    for stage, model in models.items():
        apply_storage(stage, model, plan.rung.storage, dtype)
    placement = plan.placement_for(device)
    config = plan.apply(config)
    image = torch.rand(1, 3, 28 if full else 8, 28 if full else 8, generator=torch.Generator().manual_seed(0))
    calls, state, rows = stage_calls(models, config, image), {}, {}
    with torch.inference_mode():
        for stage in STAGES:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            tracker = StorageTracker()
            tracker.ignore(t for m in models.values() for t in weights_of(m))
            start = time.perf_counter()
            placement.acquire(stage, models[stage])
            if device.type == "cuda":
                calls[stage](state)
                torch.cuda.synchronize()
                measured = torch.cuda.max_memory_allocated()
            else:  # the CPU: the tracker sees the stage's allocations; the weights the placement keeps are added
                with tracker:
                    calls[stage](state)
                placed = models.values() if plan.rung.placement == "resident" else [models[stage]]
                measured = tracker.peak + sum(weight_bytes(m) for m in placed)
            seconds = time.perf_counter() - start
            placement.release(stage, models[stage])
            rows[stage] = {"predicted_bytes": plan.estimate.stages[stage].peak, "measured_bytes": measured,
                           "seconds": seconds}
    return {"budget": plan.budget_text, "plan": plan.rung.describe(), "predicted_peak_bytes": plan.predicted_peak,
            "measured_peak_bytes": max(r["measured_bytes"] for r in rows.values()),
            "seconds_per_image": sum(r["seconds"] for r in rows.values()), "stages": rows}


def markdown(results: list[dict], header: str) -> str:
    lines = [header, "", "| budget | plan | stage | predicted GiB | measured GiB | error | s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        for stage, row in r["stages"].items():
            error = (row["predicted_bytes"] - row["measured_bytes"]) / row["measured_bytes"]
            lines.append(f"| {r['budget']} | {r['plan']} | {stage} | {row['predicted_bytes'] / GiB:.2f} | "
                         f"{row['measured_bytes'] / GiB:.2f} | {error:+.1%} | {row['seconds']:.1f} |")
        lines.append(f"| {r['budget']} | | **whole image** | {r['predicted_peak_bytes'] / GiB:.2f} | "
                     f"{r['measured_peak_bytes'] / GiB:.2f} | | {r['seconds_per_image']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--full", action="store_true", help="full-size random-weight models, bf16, on CUDA")
    which.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="folder for memory_budget_<size>.{json,md}")
    parser.add_argument("--sr3-steps", type=int, default=None, help="SR3 DPM-Solver++ steps (20; smoke 2)")
    parser.add_argument("--refine-steps", type=int, default=None, help="refiner steps (50; smoke 2)")
    args = parser.parse_args(argv)
    if args.full and not torch.cuda.is_available():
        parser.error("--full needs CUDA; use --smoke on a CPU")
    full = args.full
    args.sr3_steps = args.sr3_steps or (20 if full else 2)
    args.refine_steps = args.refine_steps or (50 if full else 2)
    results = []
    for budget in BUDGETS if full else ("1G",):
        config = run_config(budget, full, args.sr3_steps, args.refine_steps)
        estimator = None if full else Estimator(build_models(False, torch.float32))
        setting_input = (28, 28) if full else (8, 8)
        plan = plan_memory(config, setting_input, estimator=estimator)
        print(plan.describe(), flush=True)
        results.append(measure_plan(plan, config, full))
        torch.cuda.empty_cache() if full else None
    device = torch.cuda.get_device_name(0) if full else "CPU (storage tracker)"
    header = (f"Memory plans, {'full' if full else 'smoke'} ({device}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d')}); SR3 dpmpp {args.sr3_steps} steps, refine {args.refine_steps} steps")
    table = markdown(results, header)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"memory_budget_{'full' if full else 'smoke'}"
        (args.out / f"{name}.json").write_text(json.dumps({"header": header, "plans": results}, indent=2))
        (args.out / f"{name}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
