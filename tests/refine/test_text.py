"""SDXL text conditioning: shipped tokenizer, single-file conversion, seed-equivalent encoding, long prompts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsvl_core.kit.errors import CheckpointError
from rsvl_core.refine.nets.text import (
    CLIP_G_PREFIX,
    CLIP_L_PREFIX,
    SDXLTextEncoder,
    build_empty_text_encoders,
    convert_sdxl_text_encoders,
    load_shipped_tokenizers,
    load_text_encoder_from_diffusers,
    load_text_encoder_from_single_file,
    sdxl_text_encoders_to_single_file,
    sdxl_vector,
    text_encoder_config,
)
from rsvl_core.refine.tiny.text import tiny_text_encoder_single_file_state

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" in CLIP's vocabulary
# 90 content tokens: 80 x "house", then 10 tokens that the variants below change (all past token 77).
LONG_HEAD = " ".join(["house"] * 80)
LONG_A = LONG_HEAD + " " + " ".join(["red", "car"] * 5)
LONG_B = LONG_HEAD + " " + " ".join(["blue", "boat"] * 5)


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return tiny_text_encoder_single_file_state(seed=0)


@pytest.fixture(scope="module")
def encoder(tiny_state) -> SDXLTextEncoder:
    return load_text_encoder_from_single_file(tiny_state, "tiny.safetensors")


def plain_pass(encoder: SDXLTextEncoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the seed's conditioner does: one truncated, padded 77-token pass per encoder."""
    options = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids_1 = encoder.tokenizer(prompts, **options).input_ids
    ids_2 = encoder.tokenizer_2(prompts, **options).input_ids
    with torch.no_grad():
        out_1 = encoder.text_encoder(input_ids=ids_1, output_hidden_states=True)
        out_2 = encoder.text_encoder_2(input_ids=ids_2, output_hidden_states=True)
    return torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], -1), out_2.text_embeds


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers


def test_shipped_tokenizer_gives_known_clip_ids():
    tokenizer, tokenizer_2 = load_shipped_tokenizers()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert tokenizer_2("a photo of a cat").input_ids == CAT_IDS


def test_tokenizers_pad_differently_to_77():
    tokenizer, tokenizer_2 = load_shipped_tokenizers()
    assert (tokenizer.pad_token_id, tokenizer_2.pad_token_id) == (49407, 0)
    ids_1 = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    ids_2 = tokenizer_2("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(ids_1) == len(ids_2) == 77
    assert ids_1 == CAT_IDS + [49407] * 70
    assert ids_2 == CAT_IDS + [0] * 70


# ---------------------------------------------------------------------------------------------------------------
# Single-file conversion


def test_single_file_round_trip_is_exact(tiny_state, encoder):
    clip_l, clip_g = convert_sdxl_text_encoders(tiny_state)
    assert "text_projection.weight" in clip_g and "text_model.encoder.layers.1.self_attn.k_proj.bias" in clip_g
    back = sdxl_text_encoders_to_single_file(encoder.text_encoder.state_dict(), encoder.text_encoder_2.state_dict())
    assert sorted(back) == sorted(tiny_state)
    for key, value in tiny_state.items():
        assert back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key
    assert encoder.context_dim == 128 and encoder.pooled_dim == 64


def test_tiny_state_is_deterministic_and_seeded(tiny_state):
    again = tiny_text_encoder_single_file_state(seed=0)
    other = tiny_text_encoder_single_file_state(seed=1)
    key = CLIP_G_PREFIX + "transformer.resblocks.1.attn.in_proj_weight"
    assert tiny_state[key].shape == (192, 64)
    assert torch.equal(again[key], tiny_state[key])
    assert not torch.equal(other[key], tiny_state[key])
    assert len(tiny_state) == 65  # 2 + 2 * 16 + 2 (ViT-L) ; 2 + 2 * 12 + 3 (bigG)


def test_missing_key_is_named(tiny_state):
    state = dict(tiny_state)
    key = CLIP_G_PREFIX + "transformer.resblocks.1.mlp.c_proj.bias"
    del state[key]
    with pytest.raises(CheckpointError, match=r"1 missing key \(e\.g\. " + key.replace(".", r"\.")) as info:
        load_text_encoder_from_single_file(state, "sdxl.safetensors")
    assert "sdxl.safetensors" in str(info.value) and "OpenCLIP ViT-bigG" in str(info.value)


def test_unexpected_key_is_named(tiny_state):
    state = dict(tiny_state)
    key = CLIP_L_PREFIX + "text_model.encoder.layers.0.mlp.fc3.weight"
    state[key] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 unexpected key \(e\.g\. " + key.replace(".", r"\.")):
        load_text_encoder_from_single_file(state, "sdxl.safetensors")


def test_ignorable_buffers_and_other_parts_are_accepted(tiny_state, encoder):
    state = dict(tiny_state)
    state[CLIP_L_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state[CLIP_G_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    state["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # the UNet lives in the same file
    loaded = load_text_encoder_from_single_file(state, "sdxl.safetensors")
    assert torch.equal(loaded.encode(["a cat"]).context, encoder.encode(["a cat"]).context)


def test_missing_encoder_is_reported(tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith(CLIP_G_PREFIX)}
    with pytest.raises(CheckpointError, match="no text encoder weights under 'conditioner.embedders.1.model.'"):
        load_text_encoder_from_single_file(state, "sdxl.safetensors")


def test_width_not_multiple_of_64_is_refused(tiny_state):
    state = dict(tiny_state)
    state[CLIP_L_PREFIX + "text_model.embeddings.token_embedding.weight"] = torch.zeros(49408, 96)
    with pytest.raises(CheckpointError, match="width 96, not a multiple of the 64-dim"):
        load_text_encoder_from_single_file(state, "sdxl.safetensors")


def openclip_tower(hidden: int, layers: int, mlp: int, projection: int, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in open_clip's text-tower layout (without prefix)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.1, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(shape, generator=g)

    state = {
        "token_embedding.weight": rand(49408, hidden, scale=0.5),
        "positional_embedding": rand(77, hidden, scale=0.5),
        "ln_final.weight": rand(hidden, offset=1.0),
        "ln_final.bias": rand(hidden),
        "text_projection": rand(hidden, projection, scale=hidden**-0.5),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        state.update({
            p + "ln_1.weight": rand(hidden, offset=1.0), p + "ln_1.bias": rand(hidden),
            p + "attn.in_proj_weight": rand(3 * hidden, hidden, scale=hidden**-0.5),
            p + "attn.in_proj_bias": rand(3 * hidden),
            p + "attn.out_proj.weight": rand(hidden, hidden, scale=hidden**-0.5),
            p + "attn.out_proj.bias": rand(hidden),
            p + "ln_2.weight": rand(hidden, offset=1.0), p + "ln_2.bias": rand(hidden),
            p + "mlp.c_fc.weight": rand(mlp, hidden, scale=hidden**-0.5), p + "mlp.c_fc.bias": rand(mlp),
            p + "mlp.c_proj.weight": rand(hidden, mlp, scale=mlp**-0.5), p + "mlp.c_proj.bias": rand(hidden),
        })
    return state


def openclip_reference(state: dict[str, torch.Tensor], ids: torch.Tensor, heads: int):
    """open_clip's text tower written out in plain torch: (penultimate hidden state, pooled projection)."""
    batch, length = ids.shape
    width = state["token_embedding.weight"].shape[1]
    head_dim = width // heads
    x = state["token_embedding.weight"][ids] + state["positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    outputs = []
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"], eps=1e-5)
        q, k, v = (h @ state[p + "attn.in_proj_weight"].T + state[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + attended @ state[p + "attn.out_proj.weight"].T + state[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"])
        x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
        outputs.append(x)
    final = F.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"], eps=1e-5)
    pooled = final[torch.arange(batch), ids.argmax(dim=-1)] @ state["text_projection"]
    return outputs[-2], pooled


def test_openclip_conversion_matches_reference_forward(tiny_state):
    # Two heads and a projection of a different width, so head order, q/k/v order and the transpose all matter.
    tower = openclip_tower(hidden=128, layers=3, mlp=256, projection=96, seed=3)
    state = {k: v for k, v in tiny_state.items() if k.startswith(CLIP_L_PREFIX)}
    state.update({CLIP_G_PREFIX + k: v for k, v in tower.items()})
    encoder = load_text_encoder_from_single_file(state, "sdxl.safetensors")
    assert encoder.text_encoder_2.config.num_attention_heads == 2
    assert (encoder.context_dim, encoder.pooled_dim) == (64 + 128, 96)

    prompts = ["a photo of a cat", "aerial view of a river next to a green field"]
    ids = encoder.tokenizer_2(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, 7:].eq(0).all()
    want_hidden, want_pooled = openclip_reference(tower, ids, heads=2)
    got = encoder.encode(prompts)
    torch.testing.assert_close(got.context[..., 64:], want_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.pooled, want_pooled, atol=1e-5, rtol=0)
    assert want_pooled.abs().max() > 0.1  # not a trivially small comparison


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def test_short_prompt_equals_seed_single_pass(encoder):
    prompts = ["a photo of a cat", "", "dense urban area, roads and roofs, highly detailed"]
    got = encoder.encode(prompts)
    want_context, want_pooled = plain_pass(encoder, prompts)
    assert got.context.shape == (3, 77, 128) and got.pooled.shape == (3, 64)
    assert got.num_chunks == 1
    torch.testing.assert_close(got.context, want_context, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.pooled, want_pooled, atol=1e-6, rtol=0)


def test_long_prompt_is_chunked_not_truncated(encoder):
    assert len(encoder.tokenizer(LONG_A, add_special_tokens=False).input_ids) == 90
    a, b = encoder.encode([LONG_A]), encoder.encode([LONG_B])
    assert a.context.shape == (1, 154, 128) and a.num_chunks == 2
    # Only tokens 81..90 differ: the first chunk (and pooled) are identical, the second is not.
    torch.testing.assert_close(a.context[:, :77], b.context[:, :77], atol=0, rtol=0)
    torch.testing.assert_close(a.pooled, b.pooled, atol=0, rtol=0)
    assert (a.context[:, 77:] - b.context[:, 77:]).abs().max() > 1e-2

    # The seed truncates at 77 tokens: it sees the same first chunk and nothing of the tail, for both prompts.
    seed_a, seed_pooled_a = plain_pass(encoder, [LONG_A])
    seed_b, _ = plain_pass(encoder, [LONG_B])
    assert seed_a.shape == (1, 77, 128)
    torch.testing.assert_close(seed_a, seed_b, atol=0, rtol=0)
    torch.testing.assert_close(a.context[:, :77], seed_a, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.pooled, seed_pooled_a, atol=1e-6, rtol=0)

    # The second chunk is [BOS] tokens 76..90 [EOS] pad, encoded on its own.
    tail = " ".join(["house"] * 5) + " " + " ".join(["red", "car"] * 5)
    torch.testing.assert_close(a.context[:, 77:], encoder.encode([tail]).context, atol=1e-6, rtol=0)


def test_encode_pair_pads_shorter_with_empty_chunks(encoder):
    positive, negative = encoder.encode_pair([LONG_A], [""])
    assert positive.context.shape == negative.context.shape == (1, 154, 128)
    empty = encoder.encode([""])
    torch.testing.assert_close(negative.context[:, :77], empty.context, atol=1e-6, rtol=0)
    torch.testing.assert_close(negative.context[:, 77:], empty.context, atol=1e-6, rtol=0)
    torch.testing.assert_close(negative.pooled, empty.pooled, atol=1e-6, rtol=0)
    short_pos, short_neg = encoder.encode_pair(["a cat"], ["blurry"])
    assert short_pos.context.shape == short_neg.context.shape == (1, 77, 128)


def test_encode_rejects_a_bare_string(encoder):
    with pytest.raises(ValueError, match="non-empty list"):
        encoder.encode("a cat")


# ---------------------------------------------------------------------------------------------------------------
# Vector (adm) input


def test_sdxl_vector_matches_hand_formula():
    pooled = torch.randn(2, 64)
    vector = sdxl_vector(pooled, size_embed_dim=8, target_size=(512, 768))
    assert vector.shape == (2, 64 + 6 * 8)
    assert torch.equal(vector[:, :64], pooled)
    freqs = [1.0, 0.1, 0.01, 0.001]  # exp(-ln(10000) * i / 4)
    emb_1024 = [math.cos(1024 * f) for f in freqs] + [math.sin(1024 * f) for f in freqs]
    emb_0 = [1.0] * 4 + [0.0] * 4
    emb_512 = [math.cos(512 * f) for f in freqs] + [math.sin(512 * f) for f in freqs]
    emb_768 = [math.cos(768 * f) for f in freqs] + [math.sin(768 * f) for f in freqs]
    want = torch.tensor(emb_1024 + emb_1024 + emb_0 + emb_0 + emb_512 + emb_768)
    torch.testing.assert_close(vector[0, 64:], want, atol=1e-4, rtol=0)
    torch.testing.assert_close(vector[1, 64:], want, atol=1e-4, rtol=0)


def test_sdxl_vector_real_width():
    vector = sdxl_vector(torch.zeros(3, 1280, dtype=torch.float16))
    assert vector.shape == (3, 2816) and vector.dtype == torch.float16
    # orig_h starts at 1280: cos(1024 * 1) first, then cos(1024 * 10000^(-1/128)).
    assert vector[0, 1280].item() == pytest.approx(math.cos(1024), abs=1e-3)
    assert vector[0, 1281].item() == pytest.approx(math.cos(1024 * 10000 ** (-1 / 128)), abs=1e-3)
    assert vector[0, 1280 + 2 * 256 : 1280 + 2 * 256 + 128].eq(1).all()  # crop_top = 0 -> cos 0 = 1


# ---------------------------------------------------------------------------------------------------------------
# Full-size layout and diffusers folders


def manifest() -> dict[str, tuple[int, ...]]:
    """The SDXL text-encoder keys and shapes, written from the layout description (not from our converter)."""
    keys: dict[str, tuple[int, ...]] = {}
    p = "conditioner.embedders.0.transformer.text_model."
    keys[p + "embeddings.token_embedding.weight"] = (49408, 768)
    keys[p + "embeddings.position_embedding.weight"] = (77, 768)
    for i in range(12):
        layer = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys[f"{layer}self_attn.{proj}.weight"] = (768, 768)
            keys[f"{layer}self_attn.{proj}.bias"] = (768,)
        for norm in ("layer_norm1", "layer_norm2"):
            keys[f"{layer}{norm}.weight"] = keys[f"{layer}{norm}.bias"] = (768,)
        keys[layer + "mlp.fc1.weight"], keys[layer + "mlp.fc1.bias"] = (3072, 768), (3072,)
        keys[layer + "mlp.fc2.weight"], keys[layer + "mlp.fc2.bias"] = (768, 3072), (768,)
    keys[p + "final_layer_norm.weight"] = keys[p + "final_layer_norm.bias"] = (768,)
    p = "conditioner.embedders.1.model."
    keys[p + "token_embedding.weight"] = (49408, 1280)
    keys[p + "positional_embedding"] = (77, 1280)
    for i in range(32):
        block = f"{p}transformer.resblocks.{i}."
        for norm in ("ln_1", "ln_2"):
            keys[f"{block}{norm}.weight"] = keys[f"{block}{norm}.bias"] = (1280,)
        keys[block + "attn.in_proj_weight"], keys[block + "attn.in_proj_bias"] = (3840, 1280), (3840,)
        keys[block + "attn.out_proj.weight"], keys[block + "attn.out_proj.bias"] = (1280, 1280), (1280,)
        keys[block + "mlp.c_fc.weight"], keys[block + "mlp.c_fc.bias"] = (5120, 1280), (5120,)
        keys[block + "mlp.c_proj.weight"], keys[block + "mlp.c_proj.bias"] = (1280, 5120), (1280,)
    keys[p + "ln_final.weight"] = keys[p + "ln_final.bias"] = (1280,)
    keys[p + "text_projection"] = (1280, 1280)
    return keys


def test_full_size_configs_match_sdxl_manifest():
    config_l, config_g = text_encoder_config(0), text_encoder_config(1)
    assert (config_l.num_attention_heads, config_l.hidden_act, config_l.pad_token_id) == (12, "quick_gelu", 49407)
    assert (config_g.num_attention_heads, config_g.hidden_act, config_g.pad_token_id) == (20, "gelu", 0)
    text_encoder, text_encoder_2 = build_empty_text_encoders(config_l, config_g)
    assert text_encoder_2.text_projection.weight.is_meta
    layout = sdxl_text_encoders_to_single_file(text_encoder.state_dict(), text_encoder_2.state_dict())
    want = manifest()
    assert len(want) == 196 + 389
    assert sorted(set(want) - set(layout)) == []  # missing
    assert sorted(set(layout) - set(want)) == []  # unexpected
    assert {k: tuple(v.shape) for k, v in layout.items()} == want
    assert layout["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in layout


def test_diffusers_folder_loads_the_same_encoders(tmp_path, encoder):
    encoder.text_encoder.save_pretrained(tmp_path / "text_encoder")
    encoder.text_encoder_2.save_pretrained(tmp_path / "text_encoder_2")
    encoder.tokenizer.save_pretrained(tmp_path / "tokenizer")  # tokenizer_2/ absent: the shipped one is used
    loaded = load_text_encoder_from_diffusers(tmp_path)
    assert loaded.tokenizer.pad_token_id == 49407 and loaded.tokenizer_2.pad_token_id == 0
    want = encoder.encode(["a photo of a cat"])
    got = loaded.encode(["a photo of a cat"])
    torch.testing.assert_close(got.context, want.context, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.pooled, want.pooled, atol=1e-6, rtol=0)


def test_diffusers_folder_without_encoder_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match=r"text_encoder: config\.json not found"):
        load_text_encoder_from_diffusers(tmp_path)


def test_shipped_files_are_what_the_derive_script_produces():
    import importlib.util
    import json
    from pathlib import Path

    from rsvl_core.refine.nets.text import TOKENIZER_DIR

    script = Path(__file__).resolve().parents[2] / "scripts" / "derive_clip_tokenizer.py"
    spec = importlib.util.spec_from_file_location("derive_clip_tokenizer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # merges.txt has the same shape as CLIP's merge list (a header line, then pairs), so it re-derives the vocab.
    vocab, merges = module.derive((TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8"))
    assert len(merges) == 48894 and merges[0] == ("i", "n")
    assert vocab == json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert (vocab["!"], vocab["a</w>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (0, 320, 49406, 49407)

