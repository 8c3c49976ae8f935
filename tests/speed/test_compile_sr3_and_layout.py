"""SR3's UNet compiles as one graph; channels-last and SDPA wherever attention runs; the pipeline's switches."""

from __future__ import annotations

import pytest
import torch
from rsvl_testing import tiny_sr3_model
from torch.utils._python_dispatch import TorchDispatchMode

from rsvl_core.pipeline import Acceleration
from rsvl_core.pipeline.acceleration import accelerate_stage
from rsvl_core.pipeline.tiny import TINY_SR3_CONFIG
from rsvl_core.refine.fast_paths import to_channels_last
from rsvl_core.refine.tiny import tiny_refiner
from rsvl_core.stage1 import SR3UNet

COMPILE_RTOL = 1e-4


class OpNames(TorchDispatchMode):
    """Records the name of every aten op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _sr3_inputs(size: int = 32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 6, size, size, generator=g), torch.rand(2, 1, generator=g)


def test_compile_sr3_unet_has_zero_graph_breaks():
    torch.manual_seed(0)
    unet = SR3UNet(TINY_SR3_CONFIG).eval()
    with torch.inference_mode():
        explanation = torch._dynamo.explain(unet)(*_sr3_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compile_sr3_unet_equals_eager():
    unet = tiny_sr3_model().unet
    sample, level = _sr3_inputs()
    with torch.inference_mode():
        eager = unet(sample, level)
        unet.compile(fullgraph=True, dynamic=False)
        compiled = unet(sample, level)
    assert float((compiled - eager).norm() / eager.norm()) < COMPILE_RTOL


def _attention_ops(fn) -> list[str]:
    with torch.inference_mode(), OpNames() as ops:
        fn()
    return ops.names


@pytest.mark.slow
def test_compile_attention_runs_through_sdpa_everywhere():
    refiner = tiny_refiner()
    unet, control, vae = refiner.unet, refiner.control, refiner.vae
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 10])
    context = torch.randn(2, 77, refiner.config.context_dim, generator=g)
    vector = torch.randn(2, refiner.config.adm_in_channels, generator=g)
    sr3 = SR3UNet(TINY_SR3_CONFIG).eval()
    runs = {
        "refiner UNet + connectors": lambda: unet(x, t, context, vector, control(x, x, t, context, vector)),
        "VAE": lambda: vae.decode(x[:1], tile_size=0),
        "SR3": lambda: sr3(*_sr3_inputs()),
    }
    for name, run in runs.items():
        ops = _attention_ops(run)
        sdpa = [op for op in ops if "scaled_dot_product" in op]
        assert sdpa, f"{name}: no SDPA call"
        assert not [op for op in ops if "softmax" in op], f"{name}: attention outside SDPA"


@pytest.mark.slow
def test_compile_channels_last_keeps_the_outputs():
    refiner = tiny_refiner()
    unet, control = refiner.unet, refiner.control
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 10])
    context = torch.randn(2, 77, refiner.config.context_dim, generator=g)
    vector = torch.randn(2, refiner.config.adm_in_channels, generator=g)
    with torch.inference_mode():
        before = unet(x, t, context, vector, control(x, x, t, context, vector))
        to_channels_last([unet, control])
        after = unet(x, t, context, vector, control(x, x, t, context, vector))
    weights = [p for p in unet.parameters() if p.ndim == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert float((after - before).norm() / before.norm()) < 1e-5


def test_compile_switches_reach_the_loaded_stages():
    from rsvl_core.caption.captioner import Captioner
    from rsvl_core.caption.tiny import tiny_llava_next, tiny_llava_next_processor
    from rsvl_core.refine.fast_paths import Fp8Linear, is_compiled
    from rsvl_core.stage1.stage import SR3Stage1

    accel = Acceleration.all_on(compile_backend="eager")
    assert accel.enabled() == ["compile", "cuda_graphs", "static_cache", "fp8", "channels_last"]
    assert Acceleration().enabled() == []
    stage1, refiner = SR3Stage1(tiny_sr3_model()), tiny_refiner()
    captioner = Captioner(tiny_llava_next(0), tiny_llava_next_processor())
    for name, model in (("stage1", stage1), ("caption", captioner), ("refine", refiner)):
        accelerate_stage(name, model, accel)
    assert stage1.static_loop and captioner.static_cache and is_compiled(refiner.unet)
    assert any(isinstance(m, Fp8Linear) for m in refiner.control.modules())
    assert stage1.model.unet._compiled_call_impl is not None
