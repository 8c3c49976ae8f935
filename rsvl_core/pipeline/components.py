"""The stage entry points a face may call directly: loaders, one-stage runs and the option types they take.

Faces (the CLI, `rsvl batch`, `rsvl eval`, the demo and the ComfyUI nodes) never import a stage package; the
few stage calls that a face makes itself (a ComfyUI node runs one stage; `rsvl caption` runs the captioner
alone) are named here, so the pipeline layer is the one door into the stages.
"""

from __future__ import annotations

from ..caption import Captioner, CaptionOptions, collapse_whitespace, load_captioner
from ..caption.config import ATTENTIONS, QUANTIZATIONS
from ..refine.refiner import RefineOptions, Refiner, load_refiner, positive_prompt, refine_image, working_size
from ..refine.shared_sdxl import SupirParts, load_sdxl_text_encoders, load_supir_parts, refiner_over, shared_bytes
from ..refine.text import TextEmbedding
from ..stage1 import SpandrelStage1, load_stage1
from ..stage1.sampler import SR3SamplerOptions

__all__ = [
    "ATTENTIONS", "QUANTIZATIONS", "CaptionOptions", "Captioner", "RefineOptions", "Refiner", "SR3SamplerOptions",
    "SpandrelStage1", "SupirParts", "TextEmbedding", "load_sdxl_text_encoders", "load_supir_parts", "positive_prompt",
    "refiner_over",
    "shared_bytes",
    "collapse_whitespace", "load_captioner", "load_refiner", "load_stage1", "refine_image", "working_size",
]
