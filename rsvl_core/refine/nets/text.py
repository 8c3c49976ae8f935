"""SDXL text conditioning for the refiner: two CLIP text encoders, prompt chunking and the "vector" (adm) input.

SDXL conditions on two text encoders, stored in the original (SGM) single-file layout as:

- `conditioner.embedders.0.transformer.text_model.*`: CLIP ViT-L/14, already in `transformers.CLIPTextModel` names;
- `conditioner.embedders.1.model.*`: the OpenCLIP ViT-bigG/14 text tower, in open_clip names (fused q/k/v,
  `x @ text_projection`), converted here to `transformers.CLIPTextModelWithProjection` and back.

Encoding follows the seed's SGM conditioner: both encoders give their penultimate hidden state (no final norm),
concatenated on the channel axis into the cross-attention `context` [B, T, 768 + 1280]; bigG's projected pooled
output, followed by sinusoidal embeddings of the size/crop micro-conditions, is the `vector` [B, 1280 + 6 * 256].

Unlike the seed, long prompts are not cut at 77 tokens: the content tokens are split into chunks of 75, each
wrapped as `[BOS] chunk [EOS] pad...` and encoded separately, and the contexts are concatenated along the sequence
(T = 77 * chunks); the pooled output comes from the first chunk. A prompt of at most 75 tokens gives exactly the
seed's single pass. The positive prompt is the caption followed by the quality prompt (`caption + " " + a_prompt`);
joining them is left to the caller.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...kit.errors import CheckpointError
from ...weights.checkpoint import check_state, own_module_memory

if TYPE_CHECKING:  # annotations only; the classes are imported where they are built
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

EXPECTED = "an SDXL checkpoint with CLIP ViT-L and OpenCLIP ViT-bigG text encoders"
EXPECTED_DIFFUSERS = "a diffusers SDXL folder with text_encoder/ and text_encoder_2/"

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
# Present in some files but not weights we need: a position-index buffer, CLIP's contrastive temperature and
# open_clip's causal-mask buffer (rebuilt by the model).
IGNORED_KEYS = (
    CLIP_L_PREFIX + "text_model.embeddings.position_ids",
    CLIP_G_PREFIX + "logit_scale",
    CLIP_G_PREFIX + "attn_mask",
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # refine/configs
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "clip_tokenizer"
CLIP_L_CONFIG = CONFIG_DIR / "clip_vit_l.json"
CLIP_G_CONFIG = CONFIG_DIR / "clip_vit_bigg.json"

MAX_LENGTH = 77  # tokens per encoder pass, BOS and EOS included
CHUNK_LENGTH = MAX_LENGTH - 2  # content tokens per pass
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
HEAD_DIM = 64  # both SDXL text encoders use 64-dim attention heads; tiny models follow the same rule

# open_clip resblock names -> transformers CLIPEncoderLayer names (q/k/v are handled separately).
_G_LAYER_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_G_LAYER_RENAMES_BACK = {v: k for k, v in _G_LAYER_RENAMES.items()}
_G_TOP_RENAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_G_TOP_RENAMES_BACK = {v: k for k, v in _G_TOP_RENAMES.items()}
_G_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")


@dataclass
class TextEmbedding:
    """Text conditioning for a batch of prompts.

    Args:
        context: cross-attention states [B, T, C], T = 77 * chunks, C = 768 + 1280 for SDXL.
        pooled: bigG's projected pooled output of each prompt's first chunk [B, P], P = 1280 for SDXL.
    """

    context: torch.Tensor
    pooled: torch.Tensor

    @property
    def num_chunks(self) -> int:
        """How many 77-token passes the context holds."""
        return self.context.shape[1] // MAX_LENGTH


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers


def load_shipped_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """The two SDXL tokenizers from the files shipped in the package (no download).

    Both share CLIP's BPE vocabulary; tokenizer 1 (ViT-L) pads with `<|endoftext|>` (49407) like Hugging Face CLIP,
    tokenizer 2 (bigG) pads with id 0 (`!`) like open_clip.
    """
    vocab, merges = TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt"
    for file in (vocab, merges):
        if not file.is_file():
            raise CheckpointError(file, "file not found", "the CLIP tokenizer shipped with rsvl (reinstall rsvl)")
    from transformers import CLIPTokenizer  # on use: transformers takes seconds to import

    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=MAX_LENGTH)
    tokenizer_2 = CLIPTokenizer(str(vocab), str(merges), pad_token="!", model_max_length=MAX_LENGTH)
    return tokenizer, tokenizer_2


def chunk_token_ids(tokenizer: CLIPTokenizer, prompt: str) -> list[list[int]]:
    """Token ids of `prompt` as 77-long passes: `[BOS] up to 75 tokens [EOS] pad...`; an empty prompt gives one pass."""
    content = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    pieces = [content[i : i + CHUNK_LENGTH] for i in range(0, len(content), CHUNK_LENGTH)] or [[]]
    return [_wrap_chunk(tokenizer, piece) for piece in pieces]


def _wrap_chunk(tokenizer: CLIPTokenizer, piece: Sequence[int]) -> list[int]:
    ids = [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (MAX_LENGTH - len(ids))


# ----------------------------------------------------------------------------------------------------------------
# The encoder


class SDXLTextEncoder(nn.Module):
    """SDXL's two text encoders and tokenizers, encoding prompts as the seed's SGM conditioner does (plus chunking).

    Args:
        text_encoder: CLIP ViT-L (`CLIPTextModel`); its penultimate hidden state is the first part of the context.
        text_encoder_2: OpenCLIP ViT-bigG (`CLIPTextModelWithProjection`); penultimate hidden state and pooled output.
        tokenizer: tokenizer for `text_encoder` (pads with `<|endoftext|>`).
        tokenizer_2: tokenizer for `text_encoder_2` (pads with id 0).
    """

    def __init__(
        self,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2

    @property
    def context_dim(self) -> int:
        """Channels of the cross-attention context (2048 for SDXL)."""
        return self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled text embedding (1280 for SDXL)."""
        return self.text_encoder_2.config.projection_dim

    def count_chunks(self, prompts: Iterable[str]) -> int:
        """The most 77-token passes any of `prompts` needs."""
        return max(max(len(chunk_token_ids(t, p)) for t in (self.tokenizer, self.tokenizer_2)) for p in prompts)

    @torch.no_grad()
    def encode(self, prompts: list[str], num_chunks: int | None = None) -> TextEmbedding:
        """Encode a batch of prompts; shorter prompts are padded with empty chunks to `num_chunks` (default: the most).

        Returns a `TextEmbedding` with context [B, 77 * num_chunks, context_dim] and pooled [B, pooled_dim].
        """
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        needed = self.count_chunks(prompts)
        num_chunks = needed if num_chunks is None else num_chunks
        if num_chunks < needed:
            raise ValueError(f"num_chunks={num_chunks} is too few: the longest prompt needs {needed} chunks of 75")
        ids_1 = self._batch_ids(self.tokenizer, prompts, num_chunks)
        ids_2 = self._batch_ids(self.tokenizer_2, prompts, num_chunks)

        # 1. ViT-L: penultimate layer, no final norm, causal mask only.
        out_1 = self.text_encoder(input_ids=ids_1.to(self.text_encoder.device), output_hidden_states=True)
        # 2. bigG: penultimate layer for the context; pooled = final layer -> final norm -> first EOT -> projection.
        out_2 = self.text_encoder_2(input_ids=ids_2.to(self.text_encoder_2.device), output_hidden_states=True)
        hidden_1 = out_1.hidden_states[-2]
        hidden_2 = out_2.hidden_states[-2].to(hidden_1.device, hidden_1.dtype)

        # 3. [B * n, 77, C] -> [B, n * 77, C]; chunks of one prompt are consecutive rows.
        batch = len(prompts)
        context = torch.cat([hidden_1, hidden_2], dim=-1).reshape(batch, num_chunks * MAX_LENGTH, -1)
        pooled = out_2.text_embeds.reshape(batch, num_chunks, -1)[:, 0]
        return TextEmbedding(context=context, pooled=pooled)

    def encode_pair(self, positive: list[str], negative: list[str]) -> tuple[TextEmbedding, TextEmbedding]:
        """Encode positive and negative prompts with the same number of chunks, so they can be batched for CFG."""
        num_chunks = max(self.count_chunks(positive), self.count_chunks(negative))
        return self.encode(positive, num_chunks), self.encode(negative, num_chunks)

    @staticmethod
    def _batch_ids(tokenizer: CLIPTokenizer, prompts: list[str], num_chunks: int) -> torch.Tensor:
        """Ids [B * num_chunks, 77]: each prompt's chunks in order, then empty chunks up to `num_chunks`."""
        rows: list[list[int]] = []
        for prompt in prompts:
            chunks = chunk_token_ids(tokenizer, prompt)
            chunks += [_wrap_chunk(tokenizer, [])] * (num_chunks - len(chunks))
            rows.extend(chunks)
        return torch.tensor(rows, dtype=torch.long)


def size_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalars [N] -> [N, dim], cos first (SGM's `timestep_embedding`), odd dims zero-padded."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def sdxl_vector(
    pooled: torch.Tensor,
    size_embed_dim: int = 256,
    original_size: tuple[int, int] = (1024, 1024),
    crop_top_left: tuple[int, int] = (0, 0),
    target_size: tuple[int, int] = (1024, 1024),
) -> torch.Tensor:
    """SDXL's "vector" (adm) input: pooled text embedding then the embedded micro-conditions, [B, P + 6 * dim].

    The seed always passes original (1024, 1024), crop (0, 0) and target (1024, 1024), whatever the image size; all
    pairs are (height, width) / (top, left). `size_embed_dim` is (UNet adm width - pooled width) / 6 (256 for SDXL).
    """
    if pooled.ndim != 2:
        raise ValueError(f"pooled must be [batch, width], got shape {list(pooled.shape)}")
    if size_embed_dim <= 0:
        raise ValueError(f"size_embed_dim must be positive, got {size_embed_dim}")
    values = torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32, device=pooled.device)
    if values.numel() != 6:
        raise ValueError("original_size, crop_top_left and target_size must each be a pair of numbers")
    sizes = size_embedding(values, size_embed_dim).reshape(1, -1).to(pooled.dtype)
    return torch.cat([pooled, sizes.expand(pooled.shape[0], -1)], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Single-file layout <-> transformers


def openclip_to_hf_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower names (without prefix) -> `CLIPTextModelWithProjection` names; unknown keys pass through."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _G_TOP_RENAMES:
            out[_G_TOP_RENAMES[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()  # open_clip computes x @ P; nn.Linear x @ W.T
        elif (match := _G_RESBLOCK.fullmatch(key)) is not None:
            layer, rest = f"text_model.encoder.layers.{match[1]}.", match[2]
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                if value.shape[0] % 3:
                    out[key] = value  # cannot be split: reported as unexpected by the loader
                    continue
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    out[f"{layer}self_attn.{name}.{kind}"] = part
            else:
                module, _, leaf = rest.rpartition(".")
                out[layer + _G_LAYER_RENAMES.get(module, module) + "." + leaf] = value
        else:
            out[key] = value
    return out


def hf_to_openclip_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`CLIPTextModelWithProjection` names -> OpenCLIP text-tower names (inverse of `openclip_to_hf_text`)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = with_text_model_prefix(key)
        if key in _G_TOP_RENAMES_BACK:
            out[_G_TOP_RENAMES_BACK[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif (match := _HF_LAYER.fullmatch(key)) is not None:
            layer, rest = f"transformer.resblocks.{match[1]}.", match[2]
            module, _, leaf = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, leaf), {})[module[-6]] = value
            else:
                out[layer + _G_LAYER_RENAMES_BACK.get(module, module) + "." + leaf] = value
        elif key != "text_model.embeddings.position_ids":
            out[key] = value
    for (layer, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{layer}: q/k/v {leaf} incomplete (have {sorted(parts)}), cannot fuse into in_proj")
        out[f"{layer}attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def with_text_model_prefix(key: str) -> str:
    """Checkpoint name of a `CLIPTextModel` key: recent transformers drop the `text_model.` level from the module.

    Checkpoints (single-file and `from_pretrained` files alike) keep `text_model.*`, so that is the layout used here.
    """
    return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key


def to_module_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (checkpoint names) renamed to what `model.load_state_dict` expects in this transformers version."""
    if any(k.startswith("text_model.") for k in model.state_dict()):
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def convert_sdxl_text_encoders(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a single-file SDXL state dict into (`CLIPTextModel` state, `CLIPTextModelWithProjection` state).

    Both come in checkpoint names (`text_model.*`, `text_projection.weight`), as `from_pretrained` files hold them.

    Keys outside the two text-encoder prefixes are left out; ignorable buffers (`position_ids`, `logit_scale`) too.
    """
    clip_l: dict[str, torch.Tensor] = {}
    clip_g: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in IGNORED_KEYS:
            continue
        if key.startswith(CLIP_L_PREFIX):
            clip_l[key[len(CLIP_L_PREFIX) :]] = value
        elif key.startswith(CLIP_G_PREFIX):
            clip_g[key[len(CLIP_G_PREFIX) :]] = value
    return clip_l, openclip_to_hf_text(clip_g)


def sdxl_text_encoders_to_single_file(
    clip_l_state: dict[str, torch.Tensor], clip_g_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Inverse of `convert_sdxl_text_encoders`: the two transformers state dicts in the single-file SDXL layout."""
    out = {
        CLIP_L_PREFIX + with_text_model_prefix(key): value
        for key, value in clip_l_state.items()
        if with_text_model_prefix(key) != "text_model.embeddings.position_ids"
    }
    out.update({CLIP_G_PREFIX + key: value for key, value in hf_to_openclip_text(clip_g_state).items()})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Configs and loading


def text_encoder_config(which: int, **sizes: int) -> CLIPTextConfig:
    """The shipped config of embedder `which` (0 = ViT-L, 1 = bigG), with `sizes` overriding its dimensions.

    Heads are hidden_size // 64 for both real encoders, so that is the rule for any other width too.
    """
    path = CLIP_L_CONFIG if which == 0 else CLIP_G_CONFIG
    options = json.loads(path.read_text(encoding="utf-8"))
    options.pop("architectures", None)
    options.pop("model_type", None)
    options.update(sizes)
    hidden = options["hidden_size"]
    if "num_attention_heads" not in sizes:
        options["num_attention_heads"] = hidden // HEAD_DIM
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**options)


def infer_text_encoder_configs(
    clip_l_state: dict[str, torch.Tensor], clip_g_state: dict[str, torch.Tensor], path: str | Path = "<state dict>"
) -> tuple[CLIPTextConfig, CLIPTextConfig]:
    """Configs for the two encoders from tensor shapes (checkpoint names); real SDXL shapes give the shipped ones."""
    configs = []
    for which, state in ((0, clip_l_state), (1, clip_g_state)):
        vocab, hidden = _shape_of(state, "text_model.embeddings.token_embedding.weight", which, path)
        if hidden % HEAD_DIM:
            raise CheckpointError(
                path, f"text encoder {which} has width {hidden}, not a multiple of the 64-dim attention heads",
                EXPECTED,
            )
        layers = {int(m[1]) for k in state if (m := _HF_LAYER.fullmatch(k)) is not None}
        sizes = dict(
            vocab_size=vocab,
            hidden_size=hidden,
            max_position_embeddings=_shape_of(state, "text_model.embeddings.position_embedding.weight", which, path)[0],
            num_hidden_layers=max(layers) + 1 if layers else 0,
            intermediate_size=_shape_of(state, "text_model.encoder.layers.0.mlp.fc1.weight", which, path)[0],
            num_attention_heads=hidden // HEAD_DIM,
        )
        sizes["projection_dim"] = _shape_of(state, "text_projection.weight", which, path)[0] if which else hidden
        configs.append(text_encoder_config(which, **sizes))
    return configs[0], configs[1]


def _shape_of(state: dict[str, torch.Tensor], key: str, which: int, path: str | Path) -> tuple[int, ...]:
    """Shape of a tensor the config is read from; a missing one is named as it appears in the single file."""
    if key not in state:
        if which == 0:
            name = CLIP_L_PREFIX + key
        else:
            name = CLIP_G_PREFIX + next(iter(hf_to_openclip_text({key: torch.empty(3, 1, device="meta")})))
        raise CheckpointError(path, f"text encoder {which}: missing key {name}", EXPECTED)
    return tuple(state[key].shape)


def build_empty_text_encoders(
    config_l: CLIPTextConfig, config_g: CLIPTextConfig
) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """Both encoders with parameters on the meta device (no memory), ready for `load_state_dict(assign=True)`."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # Buffers (position_ids) stay real: they are not in the checkpoint and must survive the assign-load.
    with init_empty_weights(include_buffers=False):
        return CLIPTextModel(config_l), CLIPTextModelWithProjection(config_g)


def check_text_encoder_keys(
    state_dict: dict[str, torch.Tensor],
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    path: str | Path = "<state dict>",
) -> None:
    """Raise `CheckpointError` unless the file's text-encoder keys and shapes are exactly what the models need.

    Compared in the single-file layout, so the error names keys as they appear in the file.
    """
    expected = sdxl_text_encoders_to_single_file(text_encoder.state_dict(), text_encoder_2.state_dict())
    present = {
        k: v for k, v in state_dict.items() if k.startswith((CLIP_L_PREFIX, CLIP_G_PREFIX)) and k not in IGNORED_KEYS
    }
    check_state(expected, present, (path, EXPECTED), "text encoders")


def load_text_encoder_from_single_file(
    state_dict: dict[str, torch.Tensor],
    path: str | Path = "<state dict>",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> SDXLTextEncoder:
    """Build the SDXL text encoder from a single-file checkpoint's state dict (`path` is only named in errors).

    Strict: every text-encoder tensor must be used and present. The models are built on the meta device and take
    the file's tensors by assignment, so a full-size bigG is never allocated twice.
    """
    for prefix in (CLIP_L_PREFIX, CLIP_G_PREFIX):
        if not any(k.startswith(prefix) for k in state_dict):
            others = sorted({".".join(k.split(".")[:3]) for k in state_dict if k.startswith("conditioner.")})
            raise CheckpointError(
                path, f"no text encoder weights under {prefix!r} (conditioner parts found: {others or 'none'})",
                EXPECTED,
            )
    clip_l, clip_g = convert_sdxl_text_encoders(state_dict)
    config_l, config_g = infer_text_encoder_configs(clip_l, clip_g, path)
    text_encoder, text_encoder_2 = build_empty_text_encoders(config_l, config_g)
    check_text_encoder_keys(state_dict, text_encoder, text_encoder_2, path)
    for model, state in ((text_encoder, clip_l), (text_encoder_2, clip_g)):
        state = to_module_keys(model, {k: v.to(dtype) for k, v in state.items()})
        model.load_state_dict(state, strict=True, assign=True)
        model.eval().requires_grad_(False).to(device)
    tokenizer, tokenizer_2 = load_shipped_tokenizers()
    return SDXLTextEncoder(text_encoder, text_encoder_2, tokenizer, tokenizer_2)


def load_text_encoder_from_diffusers(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> SDXLTextEncoder:
    """Load `text_encoder/` and `text_encoder_2/` of a diffusers SDXL folder (local files only).

    Uses the folder's `tokenizer/` and `tokenizer_2/` when present, otherwise the tokenizers shipped with rsvl.
    """
    folder = Path(folder)
    for sub in ("text_encoder", "text_encoder_2"):
        if not (folder / sub / "config.json").is_file():
            raise CheckpointError(folder / sub, "config.json not found", EXPECTED_DIFFUSERS)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    shipped = load_shipped_tokenizers()
    models: list[nn.Module] = []
    for sub, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        try:
            model = cls.from_pretrained(folder / sub, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(folder / sub, f"cannot load {cls.__name__} ({message})", EXPECTED_DIFFUSERS) from None
        models.append(own_module_memory(model).eval().requires_grad_(False).to(device))
    tokenizers: list[CLIPTokenizer] = []
    for sub, fallback in (("tokenizer", shipped[0]), ("tokenizer_2", shipped[1])):
        if (folder / sub).is_dir():
            try:
                tokenizers.append(CLIPTokenizer.from_pretrained(folder / sub, local_files_only=True))
            except (OSError, ValueError) as exc:
                raise CheckpointError(folder / sub, f"cannot load the tokenizer ({exc})", EXPECTED_DIFFUSERS) from None
        else:
            tokenizers.append(fallback)
    return SDXLTextEncoder(models[0], models[1], tokenizers[0], tokenizers[1])
