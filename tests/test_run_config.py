"""Options in one place: RunConfig is validated when made; the CLI's defaults are the SETTINGS table's."""

from __future__ import annotations

import dataclasses

import pytest

from rsvl_core.cli import build_parser
from rsvl_core.pipeline import SETTINGS, RunConfig, StepSettings, refine_options_from, stage1_options_from
from rsvl_core.refine.refiner import RefineOptions
from rsvl_core.stage1 import Stage1Options


def test_a_bad_setting_fails_when_the_config_is_made_naming_it():
    with pytest.raises(ValueError, match="scale must be one of 2, 4, 8"):
        RunConfig(scale=3)
    with pytest.raises(ValueError, match="tile_size must be 0"):
        RunConfig(stage1=Stage1Options(tile_size=8))
    with pytest.raises(ValueError, match="color_fix"):
        RunConfig(refine=dataclasses.replace(RefineOptions(), color_fix="sepia"))
    with pytest.raises(ValueError, match="dtype"):
        RunConfig(dtype="fp8")
    assert RunConfig(refine=None).stage1_only and not RunConfig().stage1_only  # "refine off" said one way


def test_settings_defaults_are_the_stages_own_defaults():
    assert SETTINGS["tile_size"].default == Stage1Options().tile_size
    assert SETTINGS["refine_steps"].default == RefineOptions().sampler.steps
    assert SETTINGS["cfg_scale"].default == RefineOptions().sampler.cfg_scale
    assert SETTINGS["min_size"].default == RefineOptions().min_size
    for name, spec in SETTINGS.items():
        if spec.min is not None:
            assert spec.min <= spec.default <= spec.max, name
        if spec.choices is not None:
            assert spec.default in spec.choices, name


def test_cli_defaults_come_from_the_settings_table():
    args = build_parser().parse_args(["upscale", "x.png", "-o", "out"])
    for name, spec in SETTINGS.items():
        assert getattr(args, name) == (None if spec.preset_default else spec.default), name
    assert args.refine_steps is None and args.cfg_scale is None  # None = the preset's value


def test_builders_apply_values_then_step_settings():
    steps = StepSettings.from_choices(cache="fast", refine_steps=12, stage1_sampler="ddim", stage1_steps=0)
    refine = refine_options_from({"refine_steps": 40, "cfg_scale": 5.0, "latent_tile_size": 16}, steps)
    assert (refine.sampler.steps, refine.sampler.cfg_scale, refine.cache.mode) == (12, 5.0, "fast")
    assert refine.latent_tile_overlap == 8  # at most half a tile
    stage1 = stage1_options_from({"tile_size": 64, "stage1_steps": 0}, steps)
    assert (stage1.sampler, stage1.steps, stage1.tile_size) == ("ddim", None, 64)
    with pytest.raises(ValueError, match="stage1_cache"):
        StepSettings.from_choices(stage1_cache="seed")  # the seed has no stage-1 cache
