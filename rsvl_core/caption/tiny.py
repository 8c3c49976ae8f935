"""Tiny LLaVA-NeXT captioners with random weights, written in the real file layouts (for the demo and tests).

Everything is built in code: a word-level tokenizer with a Llama-3-style chat template, a 2-layer Llama text
model, a 2-layer CLIP vision tower and the LLaVA-NeXT projector. Nothing is downloaded. The adapter writer
produces a PEFT LoRA folder in the ORIGINAL LLaVA-NeXT naming (`base_model.model.model.layers.N...`), which
is what the seed released, so the real adapter mapping is exercised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..kit.atomic import readable_files

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = ("<unk>", PAD_TOKEN, "<|begin_of_text|>", "<|eot_id|>", IMAGE_TOKEN,
                  "<|start_header_id|>", "<|end_header_id|>")
WORDS = (
    "user assistant system the a an of and with in on near along river road roads field fields forest trees "
    "building buildings roof roofs water lake farmland crops urban rural grass bare soil shadow shadows green "
    "brown grey gray white dark light dense sparse small large area areas parking lot bridge residential "
    "industrial park canal coast beach sand desert mountain hill path track runway airport harbor ship boats "
    "cars pattern patterns texture color colors aerial image shows visible there is are"
).split()
# Llama-3 style: header tokens around the role, <|eot_id|> closing each turn, the image where the content says.
CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|> ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image> ' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ ' <|eot_id|> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|> ' }}{% endif %}"
)
# LLaVA-NeXT's original module names for the LoRA targets of one decoder layer (what the seed trained).
TEXT_LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of a tiny LLaVA-NeXT (text: hidden 32, 2 layers, 4 heads; vision: image 16, patch 4)."""

    hidden_size: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 64
    image_size: int = 16
    patch_size: int = 4
    grid_pinpoints: tuple[tuple[int, int], ...] = field(default=((16, 16), (16, 32), (32, 16), (32, 32)))


def tiny_tokenizer():
    """A word-level fast tokenizer built in code, with pad/eos/image tokens and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token=PAD_TOKEN, bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>", extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS[2:]]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llava_next_config(spec: TinyLlavaSpec | None = None, vocab_size: int | None = None):
    """A LlavaNextConfig with tiny Llama text and CLIP vision configs."""
    from transformers import LlavaNextConfig

    spec = spec or TinyLlavaSpec()
    vocab_size = vocab_size or len(SPECIAL_TOKENS) + len(WORDS)
    return LlavaNextConfig(
        text_config=dict(
            model_type="llama", hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
            vocab_size=vocab_size, max_position_embeddings=512, tie_word_embeddings=False,
            pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN), bos_token_id=2, eos_token_id=3,
        ),
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, image_size=spec.image_size,
            patch_size=spec.patch_size, projection_dim=spec.hidden_size,
        ),
        image_token_index=SPECIAL_TOKENS.index(IMAGE_TOKEN),
        image_grid_pinpoints=[list(p) for p in spec.grid_pinpoints],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def tiny_llava_next_processor(spec: TinyLlavaSpec | None = None):
    """The processor that matches :func:`tiny_llava_next_config` (same patch size, pinpoints, select strategy)."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    spec = spec or TinyLlavaSpec()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size},
        image_grid_pinpoints=[list(p) for p in spec.grid_pinpoints],
    )
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tiny_tokenizer(), patch_size=spec.patch_size,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLS token the "default" strategy drops
    )


def tiny_llava_next(seed: int = 0, spec: TinyLlavaSpec | None = None):
    """A random tiny LlavaNextForConditionalGeneration in eval mode (seeded; weights scaled up so outputs vary)."""
    from transformers import LlavaNextForConditionalGeneration

    generator = torch.Generator().manual_seed(seed)
    model = LlavaNextForConditionalGeneration(tiny_llava_next_config(spec)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "layrnorm" in name:
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if param.ndim > 1 else 0.05))
    return model


def write_tiny_llava_next(folder: str | Path, seed: int = 0, spec: TinyLlavaSpec | None = None) -> Path:
    """Save a tiny model + processor to `folder` in Hugging Face layout (config.json, model.safetensors, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from .loader import quiet_transformers

    with quiet_transformers():
        tiny_llava_next(seed, spec).save_pretrained(folder)
        tiny_llava_next_processor(spec).save_pretrained(folder)
    readable_files(folder)
    return folder


def tiny_seed_adapter_tensors(
    spec: TinyLlavaSpec | None = None, rank: int = 4, seed: int = 1, vision: bool = True, projector: bool = True,
    lm_head: bool = True,
) -> dict[str, torch.Tensor]:
    """LoRA A/B tensors named as the seed's adapter names them (original LLaVA-NeXT layout, PEFT prefix).

    Covers every text-layer projection, and optionally CLIP attention/MLP layers (`vision_tower.vision_tower.
    vision_model...`), the projector (`mm_projector.0` / `.2`) and `lm_head`.
    """
    spec = spec or TinyLlavaSpec()
    generator = torch.Generator().manual_seed(seed)
    h, inter = spec.hidden_size, spec.intermediate_size
    shapes: dict[str, tuple[int, int]] = {}  # module -> (in_features, out_features)
    kv = h // spec.heads * spec.kv_heads
    text_shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
                   "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter),
                   "mlp.down_proj": (inter, h)}
    for layer in range(spec.layers):
        for target in TEXT_LORA_TARGETS:
            shapes[f"model.layers.{layer}.{target}"] = text_shapes[target]
        if vision:
            prefix = f"model.vision_tower.vision_tower.vision_model.encoder.layers.{layer}"
            for target, shape in (("self_attn.q_proj", (h, h)), ("self_attn.out_proj", (h, h)),
                                  ("mlp.fc1", (h, inter)), ("mlp.fc2", (inter, h))):
                shapes[f"{prefix}.{target}"] = shape
    if projector:
        shapes["model.mm_projector.0"] = (h, h)
        shapes["model.mm_projector.2"] = (h, h)
    if lm_head:
        shapes["lm_head"] = (h, len(SPECIAL_TOKENS) + len(WORDS))
    tensors = {}
    for module, (fan_in, fan_out) in shapes.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.3
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.3
    return tensors


def write_tiny_seed_adapter(
    folder: str | Path, spec: TinyLlavaSpec | None = None, rank: int = 4, alpha: float = 8.0, seed: int = 1,
    modules_to_save: dict[str, torch.Tensor] | None = None, **targets: bool,
) -> Path:
    """Write adapter_config.json + adapter_model.safetensors in the seed's naming; returns the folder.

    `modules_to_save` maps ORIGINAL module (or `<module>.bias`) names, e.g. "model.embed_tokens", to the full
    replacement tensor.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tiny_seed_adapter_tensors(spec, rank, seed, **targets)
    saved_modules = set()
    for name, weight in (modules_to_save or {}).items():
        param = name if name.endswith((".weight", ".bias")) else f"{name}.weight"
        tensors[f"base_model.model.{param}"] = weight.contiguous()
        saved_modules.add(param.rsplit(".", 1)[0])
    target_modules = sorted({k[len("base_model.model."):].rsplit(".lora_", 1)[0] for k in tensors if ".lora_" in k})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "lmms-lab/llama3-llava-next-8b",
        "r": rank, "lora_alpha": alpha, "lora_dropout": 0.05, "bias": "none", "fan_in_fan_out": False,
        "target_modules": target_modules, "modules_to_save": sorted(saved_modules) or None,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    readable_files(folder)
    return folder
