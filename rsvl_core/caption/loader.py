"""Load a vision-language captioner from a local Hugging Face model folder, offline.

The folder is what `save_pretrained` writes (e.g. a local copy of `llava-hf/llama3-llava-next-8b-hf`):
config.json, model.safetensors (or shards + index; pytorch_model.bin only via weights_only loading), the
tokenizer files and the image-processor config. Nothing is downloaded: every call passes
`local_files_only=True`, and each missing file is named before transformers is asked.
The model class comes from the folder's config: LLaVA-NeXT by default, any image-text-to-text model otherwise.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..kit.devices import torch_dtype as to_torch_dtype
from ..kit.errors import CheckpointError, RsvlError
from ..weights.checkpoint import first_line, own_module_memory, read_json_config
from .adapter import AdapterReport, apply_adapter
from .config import ATTENTIONS, QUANTIZATIONS

EXPECTED = "a Hugging Face model folder (config.json, model.safetensors, tokenizer and processor files)"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_model_folder(folder: Path) -> dict:
    """Check that the files a captioner needs are there; returns config.json as a dict."""
    if not folder.is_dir():
        raise CheckpointError(folder, "model folder not found", EXPECTED)
    config_path = folder / "config.json"
    config = read_json_config(config_path, EXPECTED)
    if "model_type" not in config:
        raise CheckpointError(config_path, "has no 'model_type'", "a transformers model config")
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(folder / WEIGHT_FILES[0], "model weights not found (nor shards with an index, nor "
                              "pytorch_model.bin)", EXPECTED)
    if weights.name.endswith(".index.json"):
        _check_shards(weights)
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise CheckpointError(folder / TOKENIZER_FILES[0], "tokenizer not found (nor tokenizer.model / vocab.json)",
                              EXPECTED)
    if not any((folder / n).is_file() for n in PROCESSOR_FILES):
        raise CheckpointError(folder / PROCESSOR_FILES[0], "image processor config not found (nor "
                              "processor_config.json)", EXPECTED)
    return config


def _check_shards(index_path: Path) -> None:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(index_path, f"not a readable shard index ({exc})",
                              "a weight_map of shard files") from None
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise CheckpointError(index_path.parent / missing[0], f"weight shard not found ({len(missing)} of "
                              f"{len(shards)} missing)", f"the shards listed in {index_path.name}")


def resolve_attention(attention: str, device: torch.device) -> str:
    """`sdpa` / `eager` as asked; `flash_attention_2` only with flash-attn installed and a CUDA device."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention: must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if attention == "flash_attention_2":
        if device.type != "cuda":
            raise RsvlError(f"attention flash_attention_2 needs a CUDA device, not {device}; use sdpa")
        if importlib.util.find_spec("flash_attn") is None:
            raise RsvlError("attention flash_attention_2 needs the flash-attn package (pip install flash-attn); "
                            "use sdpa")
    return attention


def quantization_config(quantization: str, dtype: torch.dtype, device: torch.device):
    """A BitsAndBytesConfig for 8bit / 4bit (bitsandbytes must be installed), None for "none"."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization: must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RsvlError(f"{quantization} loading needs the optional bitsandbytes package "
                        "(pip install bitsandbytes); or use --dtype bf16/fp16")
    if device.type != "cuda":
        raise RsvlError(f"{quantization} loading needs a CUDA device, not {device}")
    from transformers import BitsAndBytesConfig

    # Keep the vision tower, projector and head in full precision (small, and sensitive to quantization).
    skip = ["vision_tower", "multi_modal_projector", "lm_head"]
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              llm_int8_skip_modules=skip)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars while loading (the core never prints progress)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load_vlm(
    folder: str | Path,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    quantization: str = "none",
    attention: str = "sdpa",
):
    """Load (model, processor) from a local model folder: LLaVA-NeXT, or any image-text-to-text model.

    Raises CheckpointError naming the missing or broken file; never downloads.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaNextForConditionalGeneration

    folder = Path(folder).expanduser().resolve()
    device = torch.device(device)
    torch_dtype = to_torch_dtype(dtype)
    attn = resolve_attention(attention, device)
    quant = quantization_config(quantization, torch_dtype, device)
    config = check_model_folder(folder)
    model_class = LlavaNextForConditionalGeneration if config["model_type"] == "llava_next" \
        else AutoModelForImageTextToText
    kwargs = dict(local_files_only=True, dtype=torch_dtype, attn_implementation=attn, output_loading_info=True)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device})
    with quiet_transformers():
        try:
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(folder, f"processor/tokenizer files could not be loaded ({first_line(exc)})",
                                  EXPECTED) from None
        try:
            model, info = model_class.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(folder, f"model could not be loaded ({first_line(exc)})", EXPECTED) from None
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        kind, keys = next(iter(problems.items()))
        shown = ", ".join(str(k) for k in list(keys)[:4])
        raise CheckpointError(folder, f"{len(keys)} {kind.replace('_', ' ')} in the weights: {shown}",
                              f"the weights of a {config['model_type']} model matching config.json")
    if quant is None:
        model = own_module_memory(model).to(device)
    if getattr(processor, "tokenizer", None) is None:
        raise CheckpointError(folder, "processor has no tokenizer", EXPECTED)
    return model.eval(), processor


def load_captioner(
    folder: str | Path,
    adapter: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    quantization: str = "none",
    attention: str = "sdpa",
    merge_adapter: bool = False,
    storage: str = "none",
):
    """Load a :class:`Captioner` from a model folder, with the seed's LoRA adapter folder applied when given.

    `storage` (none / fp8 / int8 / int4, `storage.py`) stores the language model's weights low-bit after the
    adapter is applied (merged adapters only: a LoRA's separate weights stay as they are)."""
    from .captioner import Captioner
    from .storage import store_language_model

    if merge_adapter and quantization != "none":
        raise ValueError("merge_adapter: cannot merge a LoRA adapter into 8bit/4bit weights; use bf16/fp16")
    model, processor = load_vlm(folder, device, dtype, quantization, attention)
    report: AdapterReport | None = None
    if adapter is not None:
        model, report = apply_adapter(model, adapter, merge=merge_adapter)
    store_language_model(model, storage)
    return Captioner(model, processor, adapter_report=report, source=Path(folder))

