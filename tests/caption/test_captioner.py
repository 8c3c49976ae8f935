"""Captioning: the seed's prompt in the chat template, reproducible for a seed, progress and cancel, offload."""

from __future__ import annotations

import pytest
import torch
from rsvl_testing import tiny_llava_next_folder, tiny_seed_adapter

from rsvl_core.caption import SEED_PROMPT, CaptionOptions, load_captioner, to_pil_images
from rsvl_core.kit.errors import Cancelled, RsvlError

FAST = CaptionOptions(max_new_tokens=8)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioner")
    return load_captioner(tiny_llava_next_folder(root), tiny_seed_adapter(root / "llava_adapter"))


@pytest.fixture
def image():
    return torch.rand(2, 3, 24, 30, generator=torch.Generator().manual_seed(0))


def test_seed_defaults():
    options = CaptionOptions()
    assert (options.max_new_tokens, options.temperature, options.do_sample, options.num_beams) == (256, 0.2, True, 1)
    assert options.prompt == SEED_PROMPT and "expert aerial\u2010image analyst" in options.prompt


@pytest.mark.parametrize("change, name", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=0.0), "temperature"),
    (dict(num_beams=0), "num_beams"), (dict(prompt="  "), "prompt"), (dict(seed=-1), "seed"),
])
def test_bad_options_are_named(change, name):
    with pytest.raises(ValueError, match=name):
        CaptionOptions(**change)


def test_prompt_goes_through_the_chat_template(captioner):
    text = captioner.prompt_text(SEED_PROMPT)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|> <image> As an expert")
    assert text.count("<image>") == 1
    assert text.endswith("Be precise yet concise. <|eot_id|> <|start_header_id|>assistant<|end_header_id|> ")


def test_caption_is_deterministic_for_a_seed(captioner, image):
    first = captioner.caption(image, FAST)
    again = captioner.caption(image, FAST)
    assert len(first) == 2 and all(isinstance(c, str) and c for c in first)
    assert first == again
    # A caption does not depend on the image's place in the batch, nor on tensor vs PIL input.
    assert captioner.caption(image[1:], FAST) == first[1:]
    assert captioner.caption(to_pil_images(image[:1])[0], FAST) == first[:1]


def test_different_seeds_can_differ(captioner, image):
    hot = [CaptionOptions(max_new_tokens=8, temperature=1.5, seed=s) for s in range(4)]
    captions = {captioner.caption(image[:1], o)[0] for o in hot}
    assert len(captions) >= 2


def test_greedy_ignores_the_seed(captioner, image):
    greedy = [captioner.caption(image[:1], CaptionOptions(max_new_tokens=6, do_sample=False, seed=s))[0]
              for s in (0, 1)]
    assert greedy[0] == greedy[1]


def test_progress_reports_every_token_and_a_raise_cancels(captioner, image):
    seen = []
    captioner.caption(image, FAST, lambda step, total, stage, preview=None: seen.append((step, total, stage)))
    assert seen[-1] == (16, 16, "caption")
    assert {s[2] for s in seen} == {"caption"}
    assert [s[0] for s in seen] == sorted(s[0] for s in seen) and len(seen) >= 9

    calls = []

    def cancel(step, total, stage, preview=None):
        calls.append(step)
        if step >= 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        captioner.caption(image, FAST, cancel)
    assert calls[-1] == 3


def test_caption_runs_where_the_placement_put_it_and_unload(tmp_path, image):
    from rsvl_core.memory.placement import LocalPlacement

    captioner = load_captioner(tiny_llava_next_folder(tmp_path))
    before = captioner.caption(image[:1], FAST)
    placement = LocalPlacement("cpu", "sequential")
    placement.acquire("caption", captioner)
    placement.release("caption", captioner)
    assert captioner.device.type == "cpu" and next(captioner.model.parameters()).device.type == "cpu"
    assert captioner.caption(image[:1], FAST) == before
    captioner.unload()
    assert captioner.model is None
    with pytest.raises(RsvlError, match="unloaded"):
        captioner.caption(image[:1], FAST)


def test_bad_image_shape_is_refused(captioner):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        captioner.caption(torch.rand(1, 4, 8, 8), FAST)
