"""The one-GPU placement plan, with the CUDA memory query and device moves stood in (no GPU here)."""

from __future__ import annotations

import pytest
import torch

from rsvl_core import pipeline as P
from rsvl_core.memory import placement


def _model(params: int) -> torch.nn.Module:
    return torch.nn.Linear(params, 1, bias=False)  # params * 4 bytes


@pytest.fixture
def fake_cuda(monkeypatch):
    moves = []
    monkeypatch.setattr(placement, "move", lambda model, device: moves.append((model, device.type)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return moves


def _models(placement: str, free_bytes: int, monkeypatch) -> P.PipelineModels:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 10**12))
    specs = {name: P.StageSpec(name, lambda device, n=n: _model(n)) for name, n in
             (("stage1", 1000), ("caption", 3000), ("refine", 5000))}
    return P.PipelineModels(torch.device("cuda"), placement, specs["stage1"], specs["caption"], specs["refine"])


def test_auto_stays_resident_while_everything_fits(fake_cuda, monkeypatch):
    models = _models("auto", free_bytes=10**9, monkeypatch=monkeypatch)
    for stage in ("stage1", "caption", "refine"):
        models.get(stage)
        models.release(stage)
    assert models.plan == "resident"
    assert all(device == "cuda" for _, device in fake_cuda)  # nothing ever sent back to the CPU


def test_auto_goes_sequential_when_the_next_model_does_not_fit(fake_cuda, monkeypatch):
    models = _models("auto", free_bytes=10**9, monkeypatch=monkeypatch)
    models.get("stage1")
    models.release("stage1")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 10**12))  # the refiner filled it
    models.get("refine")
    assert models.plan == "sequential"
    assert (models.loaded["stage1"], "cpu") in fake_cuda  # the earlier model was moved off the GPU
    models.release("refine")
    assert fake_cuda[-1] == (models.loaded["refine"], "cpu")


def test_sequential_moves_each_model_off_after_its_stage_and_cpu_is_always_resident(fake_cuda, monkeypatch):
    models = _models("sequential", free_bytes=10**9, monkeypatch=monkeypatch)
    models.get("caption")
    models.release("caption")
    assert fake_cuda == [(models.loaded["caption"], "cuda"), (models.loaded["caption"], "cpu")]
    assert P.PipelineModels(torch.device("cpu"), "sequential").plan == "resident"
    with pytest.raises(ValueError, match="placement"):
        P.PipelineModels(torch.device("cpu"), "everywhere")
    assert P.module_bytes(_model(1000)) == 4000
