"""Where a one-pass (spandrel) stage-1 model's forward runs: torch, ncnn or onnxruntime, chosen once per model.

Every face (CLI, `rsvl batch` actors, the ComfyUI node with a core UPSCALE_MODEL) reaches the network through
`upscale_spandrel`, which asks `tile_runner` for the callable that maps a (B, 3, h, w) tile to its
(B, 3, h * s, w * s) output. Backends and what they keep (tests/stage1/test_stage1_backend.py):

- `torch`: spandrel's own call; convolutional networks run channels-last (oneDNN's NHWC kernels are ~1.5x
  faster on the CPU than NCHW). Within float32 rounding of the NCHW call (relative L2 < 1e-5).
- `ncnn` (optional extra `rsvl[ncnn]`): Real-ESRGAN Compact networks on the CPU in float32 through ncnn's
  Winograd convolutions, one graph written from the module's weights (`ncnn_graph.py`). Within 1/255 of torch.
- `onnxruntime` (optional extra `rsvl[onnx]`): any network the TorchScript exporter traces, on the CPU in
  float32. Within 1/255 of torch. Never chosen by `auto` (it is not faster than channels-last torch here).
- `auto` (the default): ncnn where the model maps to it and the package is installed, else torch.

A backend that cannot take the model (not installed, another architecture, a GPU, a half dtype, a probe tile
that disagrees with torch) falls back to torch, and the run record says which backend ran and why.
`RSVL_STAGE1_BACKEND` overrides the default for a whole process (benchmarks, comparisons).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ncnn_graph import INPUT, OUTPUT, compact_to_ncnn, is_compact

LOG = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "ncnn", "onnxruntime")
BACKEND_ENV = "RSVL_STAGE1_BACKEND"
PROBE_SIZE = 24  # input pixels of the tile every non-torch backend must reproduce before it is used
PROBE_TOLERANCE = 1e-4  # max |difference| to torch on the probe tile ([0, 1] scale; 1/255 ~ 3.9e-3)

TileFn = Callable[[torch.Tensor], torch.Tensor]
# a descriptor here: spandrel's ImageModelDescriptor or rsvl's own (`compact.CompactDescriptor`), both callable on a
# tile and carrying `model`, `architecture`, `scale`, `input_channels` and `size_requirements`


@dataclass
class TileRunner:
    """A model's forward as chosen: `run(tile)` for (B, 3, h, w) -> (B, 3, h * s, w * s) on the model's device."""

    backend: str  # "torch", "torch-channels-last", "ncnn" or "onnxruntime"
    run: TileFn
    fallback: str | None = None  # why the backend asked for was not used

    def record(self) -> dict:
        """The run-record entry: which backend ran, and why another one did not."""
        entry: dict = {"backend": self.backend}
        if self.fallback:
            entry["backend_fallback"] = self.fallback
        return entry


def default_backend() -> str:
    """`RSVL_STAGE1_BACKEND` when set (checked), else "auto"."""
    name = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    check_backend(name)
    return name


def check_backend(name: str) -> None:
    """Raise ValueError unless `name` is one of `BACKENDS`."""
    if name not in BACKENDS:
        raise ValueError(f"stage-1 backend must be one of {', '.join(BACKENDS)}, got {name!r}")


# one runner per (module, backend, device, dtype): the ComfyUI node hands the same loaded
# UPSCALE_MODEL every run, and an ncnn graph or an ONNX session is built once for it
_RUNNERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, TileRunner]] = weakref.WeakKeyDictionary()


def tile_runner(descriptor: Any, backend: str | None = None) -> TileRunner:
    """The callable that runs `descriptor` on one batch of tiles, built (and cached) for this backend.

    Args:
        descriptor: a loaded spandrel image model (eval mode, placed on its device and dtype).
        backend: one of `BACKENDS`; None reads `RSVL_STAGE1_BACKEND` (default "auto").
    """
    backend = default_backend() if backend is None else backend
    check_backend(backend)
    module = descriptor.model
    parameter = next(module.parameters())
    key = (backend, parameter.device, parameter.dtype)
    cached = _RUNNERS.setdefault(module, {})
    if key not in cached:
        cached.clear()  # the module moved or changed dtype: older runners describe weights it no longer has
        cached[key] = _build(descriptor, backend)
    return cached[key]


def _build(descriptor: Any, backend: str) -> TileRunner:
    """Try the backend asked for (or auto's choice); fall back to torch with the reason."""
    torch_runner = _torch_runner(descriptor)
    if backend == "torch":
        return torch_runner
    reason = _unsupported(descriptor, backend)
    if reason is not None:
        if backend != "auto":
            LOG.warning("stage-1 backend %s not used: %s; running torch", backend, reason)
        return TileRunner(torch_runner.backend, torch_runner.run, None if backend == "auto" else reason)
    chosen = "ncnn" if backend == "auto" else backend
    try:
        run = _ncnn_run(descriptor) if chosen == "ncnn" else _onnx_run(descriptor)
        _probe(run, torch_runner.run, descriptor)
    except (RuntimeError, ValueError, OSError) as error:  # export, load or probe failed: torch is always there
        reason = f"{chosen} could not run this model ({' '.join(str(error).split())[:200]})"
        LOG.warning("stage-1 backend %s not used: %s; running torch", chosen, reason)
        return TileRunner(torch_runner.backend, torch_runner.run, reason)
    return TileRunner(chosen, run)


def _unsupported(descriptor: Any, backend: str) -> str | None:
    """Why `backend` ("auto", "ncnn" or "onnxruntime") cannot take this model, or None."""
    parameter = next(descriptor.model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        return f"it runs on the CPU in float32 only (model: {parameter.device.type}, {parameter.dtype})"
    if backend in ("auto", "ncnn"):
        if not is_compact(descriptor.model):
            return f"ncnn takes Real-ESRGAN Compact networks only, not {descriptor.architecture.name}"
        if not _installed("ncnn"):
            return "the ncnn package is not installed (pip install 'rsvl[ncnn]')"
        return None
    if not _installed("onnxruntime") or not _installed("onnx"):
        return "onnxruntime and onnx are not installed (pip install 'rsvl[onnx]')"
    return None


def _installed(name: str) -> bool:
    """Whether `name` imports (an optional backend's package)."""
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _torch_runner(descriptor: Any) -> TileRunner:
    """spandrel's call, channels-last where the network is convolutional (weights converted once, in place)."""
    module = descriptor.model
    if not _is_convolutional(module):
        return TileRunner("torch", descriptor)
    module.to(memory_format=torch.channels_last)

    def run(tile: torch.Tensor) -> torch.Tensor:
        return descriptor(tile.contiguous(memory_format=torch.channels_last))

    return TileRunner("torch-channels-last", run)


def _is_convolutional(module: nn.Module) -> bool:
    """More weights in 2-D convolutions than in linear layers (CNNs yes; SwinIR-like transformers no)."""
    conv = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
    return conv > linear


def _ncnn_run(descriptor: Any) -> TileFn:
    """The Compact network as one ncnn graph (float32, CPU, as many threads as torch uses)."""
    import ncnn

    param, weights = compact_to_ncnn(descriptor.model)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = torch.get_num_threads()
    net.opt.openmp_blocktime = 0  # no spinning between layers: idle threads would cost CPU time for nothing
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)  # float32 throughout: the result stays within rounding of torch's
    with tempfile.TemporaryDirectory(prefix="rsvl-ncnn-") as folder:  # the binding reads weights from a file
        (Path(folder) / "net.param").write_text(param)
        (Path(folder) / "net.bin").write_bytes(weights)
        if net.load_param(str(Path(folder) / "net.param")) != 0 or net.load_model(str(Path(folder) / "net.bin")):
            raise RuntimeError("ncnn refused the graph written for this Compact network")

    def run(tile: torch.Tensor) -> torch.Tensor:
        outs = []
        for image in tile.detach().float().cpu().numpy():
            image = np.ascontiguousarray(image)  # kept alive here: ncnn.Mat borrows the array's memory
            extractor = net.create_extractor()
            extractor.input(INPUT, ncnn.Mat(image))
            status, out = extractor.extract(OUTPUT)
            if status != 0:
                raise RuntimeError(f"ncnn failed on a {image.shape[1]}x{image.shape[2]} tile (status {status})")
            out = np.array(out)  # ncnn's Mat belongs to the extractor
            outs.append(np.clip(out, 0.0, 1.0, out=out))  # as spandrel's call does, before tiles are blended
        # numpy's clip and no stacking copy for the usual single tile: no torch thread pool for a memory-bound op
        return torch.from_numpy(outs[0]).unsqueeze(0) if len(outs) == 1 else torch.from_numpy(np.stack(outs))

    return run


def _onnx_run(descriptor: Any) -> TileFn:
    """The network exported with torch's TorchScript exporter (dynamic height and width) into an ORT session."""
    import onnxruntime

    module = descriptor.model
    sample = torch.rand(1, descriptor.input_channels, *_padded(descriptor, 32, 32))
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad():  # ComfyUI runs nodes in inference mode; tracing cannot
        torch.onnx.export(module, (sample,), buffer, input_names=["image"], output_names=["out"], opset_version=17,
                          dynamic_axes={"image": {2: "height", 3: "width"}, "out": {2: "height", 3: "width"}},
                          dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    scale = descriptor.scale

    def run(tile: torch.Tensor) -> torch.Tensor:
        height, width = tile.shape[-2:]
        padded = _pad(descriptor, tile.detach().float().cpu())
        out = session.run(None, {"image": np.ascontiguousarray(padded.numpy())})[0]
        return torch.from_numpy(out)[..., : height * scale, : width * scale].clamp_(0.0, 1.0)

    return run


def _padded(descriptor: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) raised to the model's size requirements."""
    requirements = descriptor.size_requirements
    if requirements is None:
        return height, width
    pad_w, pad_h = requirements.get_padding(width, height)
    return height + pad_h, width + pad_w


def _pad(descriptor: Any, tile: torch.Tensor) -> torch.Tensor:
    """Pad right and bottom as spandrel's call does: reflect as far as it can, then replicate."""
    height, width = tile.shape[-2:]
    full_h, full_w = _padded(descriptor, height, width)
    pad_h, pad_w = full_h - height, full_w - width
    if not pad_h and not pad_w:
        return tile
    reflect_h, reflect_w = min(pad_h, height - 1), min(pad_w, width - 1)
    tile = F.pad(tile, (0, reflect_w, 0, reflect_h), "reflect")
    return F.pad(tile, (0, pad_w - reflect_w, 0, pad_h - reflect_h), "replicate")


def _probe(run: TileFn, reference: TileFn, descriptor: Any) -> None:
    """Raise ValueError unless `run` reproduces torch on a seeded probe tile within `PROBE_TOLERANCE`."""
    generator = torch.Generator().manual_seed(0)
    tile = torch.rand(1, descriptor.input_channels, PROBE_SIZE, PROBE_SIZE + 8, generator=generator)
    want = reference(tile).float()
    got = run(tile).float()
    if got.shape != want.shape:
        raise ValueError(f"probe tile: output shape {tuple(got.shape)}, torch gives {tuple(want.shape)}")
    difference = (got - want).abs().max().item()
    if not difference <= PROBE_TOLERANCE:
        raise ValueError(f"probe tile differs from torch by {difference:.2e} (tolerance {PROBE_TOLERANCE:.0e})")
