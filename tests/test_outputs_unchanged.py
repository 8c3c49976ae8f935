"""`rsvl upscale` and the three shipped workflows give the outputs recorded before the engine redesign.

The cases and the recorder are in golden_outputs.py; the recording is tests/golden/outputs.npz. Same seeds,
same tiny models, same settings: the images must agree to the uint8 level. A float difference of a few ulps
(another processor's kernel path) can move a pixel across a rounding boundary, so up to 2/255 on at most 1 %
of the values is tolerated; any real change (options, seeds, order of operations) moves nearly every pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
from golden_outputs import GOLDEN, run_all


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("unchanged"))


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN.is_file(), reason=f"no recorded outputs at {GOLDEN}")
def test_outputs_are_unchanged_for_the_same_seeds(outputs):
    recorded = dict(np.load(GOLDEN))
    assert sorted(outputs) == sorted(recorded)
    for key, want in recorded.items():
        got = outputs[key]
        if want.ndim == 0:
            # a caption: discrete tokens, compared exactly. Each token drawn at temperature 0.2 won its draw
            # (torch.multinomial: argmax of p / q) by a log-margin >= 1.16 (measured on the recorded cases), far
            # beyond what float32 rounding on another kernel path moves the scaled logits (~3e-5 measured).
            assert str(got) == str(want), key
            continue
        assert got.shape == want.shape, key
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= 2 and (diff > 0).mean() <= 0.01, f"{key}: max {diff.max()}, {(diff > 0).mean():.2%}"
