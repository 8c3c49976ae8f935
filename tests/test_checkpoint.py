"""Reading training checkpoints safely: Lightning-style extras load as inert data, code never runs."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from rsvl_core.kit.errors import CheckpointError
from rsvl_core.weights.checkpoint import read_state_dict


def _save_with_foreign_class(path, module_name: str, payload_runs: list) -> None:
    """Save a checkpoint holding an object of a class from `module_name`, then make that module vanish."""
    package, _, leaf = module_name.partition(".")
    modules = {package: types.ModuleType(package), module_name: types.ModuleType(module_name)}

    class Config:
        def __init__(self, values) -> None:
            payload_runs.append("constructed")  # would show if loading ran this class's code
            self.values = values

        def __reduce__(self):
            return (Config, (self.values,))

    Config.__module__, Config.__qualname__ = module_name, "Config"
    modules[module_name].Config = Config
    sys.modules.update(modules)
    try:
        torch.save({"state_dict": {"w": torch.arange(3.0)}, "hyper_parameters": Config({"lr": 1e-4})}, path)
    finally:
        for name in modules:
            sys.modules.pop(name, None)


def test_lightning_style_extras_load_as_inert_data_without_importing_them(tmp_path):
    runs: list = []
    path = tmp_path / "SUPIR-v0Q.ckpt"
    _save_with_foreign_class(path, "omegaconf.dictconfig", runs)
    runs.clear()
    state = read_state_dict(path, "a SUPIR checkpoint")
    assert list(state) == ["w"] and torch.equal(state["w"], torch.arange(3.0))
    assert runs == [] and "omegaconf.dictconfig" not in sys.modules


def test_unknown_globals_outside_the_data_modules_are_still_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    _save_with_foreign_class(path, "somepackage.tools", [])
    with pytest.raises(CheckpointError, match="never executes pickled code"):
        read_state_dict(path, "a SUPIR checkpoint")
