"""The stage entry points a face may call directly: loaders, one-stage runs and the option types they take.

Faces (the CLI, `rsvl batch`, `rsvl eval`, the demo and the ComfyUI nodes) never import a stage package; the
few stage calls that a face makes itself (a ComfyUI node runs one stage; `rsvl caption` runs the captioner
alone) are named here, so the pipeline layer is the one door into the stages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from ..caption import Captioner, CaptionOptions, collapse_whitespace, load_captioner
from ..caption.config import ATTENTIONS, QUANTIZATIONS
from ..kit.errors import CheckpointError
from ..refine.loading.shared_sdxl import (
    SupirParts,
    load_sdxl_text_encoders,
    load_supir_parts,
    refiner_over,
    shared_bytes,
    supir_parts_over,
)
from ..refine.nets.text import TextEmbedding
from ..refine.refiner import RefineOptions, Refiner, load_refiner, positive_prompt, refine_image, working_size
from ..stage1 import SpandrelStage1, load_stage1
from ..stage1.sampler import Stage1Options
from ..weights.checkpoint import first_line, headers_only, read_state_dict

__all__ = [
    "ATTENTIONS", "QUANTIZATIONS", "CaptionOptions", "Captioner", "RefineOptions", "Refiner", "Stage1Options",
    "SpandrelStage1", "SupirParts", "TextEmbedding", "collapse_whitespace", "integer_weights", "load_captioner",
    "load_problems", "load_refiner", "load_sdxl_text_encoders", "load_stage1", "load_supir_parts", "positive_prompt",
    "refine_image", "refiner_over", "shared_bytes", "supir_parts_over", "working_size",
]


def load_problems(found: Mapping[str, Path]) -> dict[str, str]:
    """Whether the found weights will load: each stage's own loader run over meta tensors read from the files'
    headers (no weights read, no memory), so `rsvl weights check` says "ok" only to what loading accepts.

    `found`: weights id (the table's: sr3, sdxl, supir, captioner, caption-adapter) -> path. Returns id -> the
    loader's one-line refusal, for the ids whose file it blames; ids not in the result loaded (or were not
    probed: the refiner needs both of its files).
    """
    problems: dict[str, str] = {}
    by_path = {Path(path).resolve(): item for item, path in found.items()}

    def probe(items: tuple[str, ...], load: Callable[[], object]) -> None:
        try:
            with headers_only():
                load()
        except CheckpointError as exc:
            blamed = by_path.get(exc.path.resolve())
            problems[blamed if blamed in items else items[-1]] = exc.problem
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:  # a loader that failed in its own way
            problems[items[-1]] = f"does not load: {first_line(exc)}"

    if "sr3" in found:
        probe(("sr3",), lambda: load_stage1(found["sr3"], device="meta"))
    if "sdxl" in found and "supir" in found:
        probe(("sdxl", "supir"), lambda: load_refiner(found["sdxl"], found["supir"], device="meta"))
    for item in ("captioner", "caption-adapter"):
        if item in found and (problem := integer_weights(Path(found[item]))):
            problems[item] = problem
    return problems


def integer_weights(folder: Path) -> str | None:
    """A model folder's safetensors holding integer tensors (a damaged conversion), from the headers alone."""
    for file in sorted(folder.rglob("*.safetensors")) if folder.is_dir() else [folder]:
        with headers_only():
            state = read_state_dict(file, "a model folder's weights")
        ints = sorted(k for k, v in state.items() if not v.is_floating_point())
        if ints:
            return (f"{file.name}: {len(ints)} tensor(s) stored as {str(state[ints[0]].dtype).removeprefix('torch.')}"
                    f" (e.g. {ints[0]}): the weights must be floating point")
    return None
