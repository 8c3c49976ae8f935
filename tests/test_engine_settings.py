"""Options once: every SETTINGS entry is a CLI flag and a node input, and its value lands where `target` says."""

from __future__ import annotations

import pytest

from rsvl_core.cli import build_parser
from rsvl_core.cli.settings import config_from_args, flag_names
from rsvl_core.pipeline import SETTINGS, RunConfig

# A non-default value for each setting, and how to read it back from the RunConfig it builds.
PROBES = {
    "scale": (4, lambda c: c.scale),
    "seed": (7, lambda c: (c.seed, c.caption.seed)),
    "dtype": ("bf16", lambda c: c.dtype),
    "stage1_sampler": ("ddim", lambda c: c.stage1.sampler),
    "stage1_steps": (7, lambda c: c.stage1.steps),
    "tile_size": (256, lambda c: c.stage1.tile_size),
    "tile_overlap": (16, lambda c: c.stage1.tile_overlap),
    "tile_batch": (2, lambda c: c.stage1.tile_batch),
    "stage1_cache": ("fast", lambda c: c.stage1.cache.mode),
    "caption_max_tokens": (9, lambda c: c.caption.max_new_tokens),
    "caption_temperature": (0.7, lambda c: (c.caption.temperature, c.caption.do_sample)),
    "caption_prompt": ("<image> list the roads", lambda c: c.caption.prompt),
    "preset": ("cpu-quick", lambda c: c.preset),
    "refine_steps": (12, lambda c: c.refine.sampler.steps),
    "cfg_scale": (5.0, lambda c: c.refine.sampler.cfg_scale),
    "cfg_scale_start": (3.0, lambda c: c.refine.sampler.cfg_scale_start),
    "control_scale": (0.5, lambda c: c.refine.sampler.control_scale),
    "restoration_scale": (2.0, lambda c: c.refine.sampler.restoration_scale),
    "s_churn": (1.0, lambda c: c.refine.sampler.s_churn),
    "color_fix": ("adain", lambda c: c.refine.color_fix),
    "min_size": (512, lambda c: c.refine.min_size),
    "latent_tile_size": (64, lambda c: c.refine.latent_tile_size),
    "positive_prompt": ("crisp", lambda c: c.refine.positive_prompt),
    "negative_prompt": ("smeared", lambda c: c.refine.negative_prompt),
    "cache": ("fast", lambda c: c.refine.cache.mode),
    "cache_threshold": (0.05, lambda c: c.refine.cache.threshold),
    "samples": (3, lambda c: (c.uncertainty.samples, c.sample_seeds)),
    "combine": ("median", lambda c: c.uncertainty.combine),
    "guard": (12.5, lambda c: c.uncertainty.guard),
    "guard_feather": (3, lambda c: c.uncertainty.feather),
    "uncertainty_band": (True, lambda c: c.uncertainty.band),
    "max_vram": ("12G", lambda c: c.max_vram),
}
EXPECTED = {"seed": (7, 7), "caption_temperature": (0.7, True), "samples": (3, [0, 1, 2])}
NEEDS = {"cache_threshold": {"cache": "fast"},  # a threshold only means something with a cache on
         "combine": {"samples": 2}, "guard": {"samples": 2}, "uncertainty_band": {"samples": 2}}  # need N >= 2


def expected(name):
    return EXPECTED.get(name, PROBES[name][0])


def test_engine_probes_cover_every_setting():
    assert set(PROBES) == set(SETTINGS)
    for name, (value, read) in PROBES.items():
        assert read(RunConfig.from_values(**NEEDS.get(name, {}))) != expected(name) or \
            SETTINGS[name].choices == (value,), f"{name}: the probe value is the default"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_engine_every_setting_is_reachable_from_the_cli(name):
    value, read = PROBES[name]
    argv = ["upscale", "x.png", "-o", "out", flag_names(name)[0], *([] if value is True else [str(value)])]
    for other, other_value in NEEDS.get(name, {}).items():
        argv += [flag_names(other)[0], str(other_value)]
    config = config_from_args(build_parser().parse_args(argv))
    assert read(config) == expected(name)


def test_engine_from_values_refuses_unknown_names_and_bad_values():
    with pytest.raises(ValueError, match="unknown setting.*cfg"):
        RunConfig.from_values(cfg=5.0)
    with pytest.raises(ValueError, match="tile_overlap 200 is more than half of tile_size 224"):
        RunConfig.from_values(tile_overlap=200)
    with pytest.raises(ValueError, match="unknown refiner preset 'turbo'"):
        RunConfig.from_values(preset="turbo")
    assert RunConfig.from_values() == RunConfig()  # no values = the seed's defaults, the same object
    assert RunConfig.from_values(stage1_only=True).refine is None
