"""Caption images with a loaded vision-language model (LLaVA-NeXT by default), reproducibly for a seed."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from PIL import Image

from ..kit.errors import RsvlError
from ..kit.image import to_uint8
from ..kit.progress import ProgressCallback, report
from .adapter import AdapterReport
from .config import CaptionOptions

IMAGE_TOKEN = "<image>"
STAGE = "caption"


class _ProgressCriteria:
    """A transformers StoppingCriteria that never stops by itself: it reports progress, and a callback that
    raises (e.g. :class:`rsvl_core.kit.errors.Cancelled`) ends generation between tokens."""

    def __init__(self, callback: ProgressCallback | None, prompt_length: int, offset: int, total: int) -> None:
        self.callback = callback
        self.prompt_length = prompt_length
        self.offset = offset
        self.total = total

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        """Report `offset + generated tokens` of `total`; return "not done" for every sequence."""
        report(self.callback, self.offset + input_ids.shape[1] - self.prompt_length, self.total, STAGE)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def to_pil_images(image: torch.Tensor | Image.Image | list[Image.Image]) -> list[Image.Image]:
    """image: (B, 3, H, W) or (3, H, W) float in [0, 1], a PIL image, or a list of them -> RGB PIL images."""
    if isinstance(image, Image.Image):
        return [image.convert("RGB")]
    if isinstance(image, (list, tuple)):
        return [p for item in image for p in to_pil_images(item)]
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image: expected a (B, 3, H, W) tensor or a PIL image, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected shape (B, 3, H, W), got {tuple(image.shape)}")
    return [Image.fromarray(to_uint8(single), "RGB") for single in image]


def prompt_messages(prompt: str) -> list[dict]:
    """One user turn: the prompt's text with the image where its `<image>` token is (at the start when absent)."""
    pieces = prompt.split(IMAGE_TOKEN)
    if len(pieces) == 1:
        pieces = ["", prompt]
    content: list[dict] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            content.append({"type": "image"})
        if piece.strip():
            content.append({"type": "text", "text": piece.strip()})
    return [{"role": "user", "content": content}]


def collapse_whitespace(caption: str) -> str:
    """A caption with its whitespace (newlines, runs of spaces) collapsed to single spaces."""
    return " ".join(caption.split())


class Captioner:
    """A loaded VLM + its processor. `caption()` describes images where the weights are (a placement moves
    them, never the captioner); `unload()` drops them."""

    def __init__(self, model, processor, adapter_report: AdapterReport | None = None, source: Path | None = None
                 ) -> None:
        self.model = model
        self.processor = processor
        self.adapter_report = adapter_report
        self.source = source
        self.quantized = getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None)
        # Decode with a preallocated (static) KV cache: fixed shapes, so on CUDA transformers compiles the
        # decode step (its auto-compile for static caches); the same tokens as the default dynamic cache.
        self.static_cache = False

    @property
    def device(self) -> torch.device:
        """Where caption() runs: where the placement put the weights."""
        self._require_loaded()
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's weights."""
        return next(p for p in self.model.parameters() if p.is_floating_point()).dtype

    def _require_loaded(self) -> None:
        if self.model is None:
            raise RsvlError("captioner was unloaded; load it again to caption")

    def prompt_text(self, prompt: str) -> str:
        """The full model input text: `prompt` in the model's chat template, ready for generation."""
        return self.processor.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)

    def caption(
        self,
        image: torch.Tensor | Image.Image | list[Image.Image],
        options: CaptionOptions | None = None,
        callback: ProgressCallback | None = None,
    ) -> list[str]:
        """One caption per image.

        Args:
            image: (B, 3, H, W) float in [0, 1] (the stage-1 output), a PIL image, or a list of PIL images.
            options: prompt and generation settings (the seed's by default); checked before any work.
            callback: called as (step, total, "caption") after each generated token; raising cancels.
        """
        from transformers import StoppingCriteriaList

        options = options or CaptionOptions()
        self._require_loaded()
        images = to_pil_images(image)
        text = self.prompt_text(options.prompt)
        tokenizer = self.processor.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sampling = dict(do_sample=True, temperature=float(options.temperature)) if options.do_sample \
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        total = len(images) * options.max_new_tokens
        captions = []
        for index, pil in enumerate(images):
            inputs = self.processor(images=pil, text=text, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            prompt_length = inputs["input_ids"].shape[1]
            criteria = _ProgressCriteria(callback, prompt_length, index * options.max_new_tokens, total)
            # The same seed for every image: a caption does not depend on the image's place in the batch.
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(options.seed)
                output = self.model.generate(
                    **inputs, max_new_tokens=options.max_new_tokens, num_beams=options.num_beams,
                    pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([criteria]), **sampling,
                    **self.cache_arguments(),
                )
            report(callback, (index + 1) * options.max_new_tokens, total, STAGE)
            captions.append(tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip())
        return captions

    def cache_arguments(self) -> dict:
        """generate()'s KV-cache arguments: none (the dynamic cache), or the static cache when asked for."""
        return {"cache_implementation": "static"} if self.static_cache else {}

    def modules(self) -> dict[str, torch.nn.Module]:
        """The parts placement may move: the VLM, unless it is 8/4-bit (bitsandbytes weights stay where they are)."""
        return {} if self.model is None or self.quantized else {"vlm": self.model}

    def unload(self) -> None:
        """Drop the model and processor and release their memory; the captioner cannot be used afterwards."""
        self.model = None
        self.processor = None
        gc.collect()
        _empty_cache()


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
