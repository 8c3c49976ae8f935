"""Low-bit storage of the captioner's language model (fp8, int4, int8 through torchao): memory and quality.

The tiny captioner (hidden 64 so int4's groups of 64 apply, as in the real 4096-wide model) in bf16 is the
reference. Storage: bytes of the language model's decoder layers, the part that is stored low-bit (vision
tower, projector, embeddings and LM head stay bf16). Quality, on the bf16 model's own greedy caption
(prompt + TOKENS generated tokens, teacher-forced through both models): token agreement = the share of
generated positions where both models' next token (argmax) is the same, and the relative L2 error of the
next-token logits over every position. (Free-running greedy captions of a random tiny model diverge at the
first near-tie, so they say little about the storage; teacher forcing compares every position.)
"""

from __future__ import annotations

import copy

import pytest
import torch

from rsvl_core.caption.captioner import Captioner
from rsvl_core.caption.config import CaptionOptions
from rsvl_core.caption.storage import LOGIT_RELATIVE_ERROR, language_model_of, store_language_model
from rsvl_core.caption.tiny import TinyLlavaSpec, tiny_llava_next, tiny_llava_next_processor
from rsvl_core.memory.lowbit import Fp8Linear, Int4Linear, tensor_bytes, torchao_available

SPEC = TinyLlavaSpec(hidden_size=64, intermediate_size=128)
STORAGE_SHARE = {"fp8": 0.55, "int8": 0.55, "int4": 0.30}  # of the bf16 bytes, the bounds
# teacher-forced next-token agreement with bf16 over the caption: measured fp8 75 %, int8 92 %, int4 38 %
TOKEN_AGREEMENT = {"fp8": 0.65, "int8": 0.85, "int4": 0.30}
TOKENS = 24


def _layer_bytes(model) -> int:
    layers = language_model_of(model).layers
    return sum(tensor_bytes(t) for t in (*layers.parameters(), *layers.buffers()))


def _bf16_captioner() -> Captioner:
    return Captioner(tiny_llava_next(3, SPEC).to(torch.bfloat16), tiny_llava_next_processor(SPEC))


def _inputs(captioner: Captioner, image: torch.Tensor):
    text = captioner.prompt_text(CaptionOptions().prompt)
    inputs = captioner.processor(images=captioner_images(image), text=text, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    return inputs


def _greedy_caption(captioner: Captioner, inputs) -> torch.Tensor:
    """The prompt followed by TOKENS greedy tokens (input ids, (1, P + TOKENS))."""
    with torch.inference_mode():
        return captioner.model.generate(**inputs, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                                        pad_token_id=0)


def _logits(captioner: Captioner, inputs, ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits (P + TOKENS, vocab) float32 for `ids`, teacher-forced."""
    forced = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        return captioner.model(**forced).logits[0].float()


def captioner_images(image: torch.Tensor):
    from rsvl_core.caption.captioner import to_pil_images

    return to_pil_images(image)[0]


@pytest.mark.parametrize("storage", ["fp8", "int4", "int8"])
def test_lowbit_caption_memory_storage_and_quality(storage):
    if storage == "int8" and not torchao_available():
        pytest.skip("int8 storage needs torchao (pip install torchao); fp8 and int4 need nothing")
    reference = _bf16_captioner()
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    inputs = _inputs(reference, image)
    ids = _greedy_caption(reference, inputs)
    want_logits = _logits(reference, inputs, ids)
    bf16_bytes = _layer_bytes(reference.model)

    lowbit = Captioner(copy.deepcopy(reference.model), reference.processor)
    replaced = store_language_model(lowbit.model, storage)
    got_logits = _logits(lowbit, inputs, ids)

    assert replaced == 7 * SPEC.layers  # q, k, v, o, gate, up, down per decoder layer
    share = _layer_bytes(lowbit.model) / bf16_bytes
    error = float((got_logits - want_logits).norm() / want_logits.norm())
    generated = slice(ids.shape[1] - TOKENS - 1, ids.shape[1] - 1)  # the positions that chose the caption
    agreement = float((got_logits[generated].argmax(-1) == want_logits[generated].argmax(-1)).float().mean())
    print(f"{storage}: decoder-layer bytes {share:.1%} of bf16, logit relative error {error:.3f}, "
          f"token agreement {agreement:.0%} over {TOKENS} greedy tokens")
    assert share <= STORAGE_SHARE[storage]
    assert 0 < error < LOGIT_RELATIVE_ERROR[storage]
    assert agreement >= TOKEN_AGREEMENT[storage]
    # what stayed bf16: vision tower, projector, embeddings, LM head
    vlm = lowbit.model.model
    kept = [vlm.vision_tower, vlm.multi_modal_projector, language_model_of(lowbit.model).embed_tokens,
            lowbit.model.lm_head]
    assert all(p.dtype == torch.bfloat16 for m in kept for p in m.parameters())
    if storage != "int8":
        kinds = {type(m) for m in language_model_of(lowbit.model).layers.modules()}
        assert (Fp8Linear if storage == "fp8" else Int4Linear) in kinds and torch.nn.Linear not in kinds


def test_lowbit_caption_memory_int4_roundtrip_is_within_half_a_step():
    from rsvl_core.memory.lowbit import INT4_GROUP

    torch.manual_seed(0)
    layer = torch.nn.Linear(2 * INT4_GROUP, 8)
    packed = Int4Linear(layer, torch.float32)
    weight = layer.weight.detach().reshape(8, 2, INT4_GROUP)
    step = weight.abs().amax(dim=-1, keepdim=True) / 7
    error = (packed.weight.reshape(8, 2, INT4_GROUP) - weight).abs()
    assert bool((error <= step * (0.5 + 8 / 256)).all())  # half a step, plus the bf16 scale's rounding
    assert packed.weight_int4.dtype == torch.uint8 and packed.weight_int4.shape == (8, INT4_GROUP)


def test_lowbit_caption_memory_refuses_unknown_storage():
    with pytest.raises(ValueError, match="caption weight storage must be one of none, fp8, int8, int4, got 'nf4'"):
        store_language_model(tiny_llava_next(0), "nf4")
