"""Caption options: the seed's prompt and generation settings as the defaults, checked before any heavy work."""

from __future__ import annotations

from dataclasses import dataclass

# The seed's prompt file (prompts/prompt_config.yaml) with its image token, verbatim (note the U+2010 hyphen).
SEED_PROMPT = (
    "<image> As an expert aerial\u2010image analyst, describe every visible detail: terrain and land use, "
    "vegetation patterns, water bodies, roads and buildings, textures, colors, shadows, spatial relationships, "
    "and any human activity. Be precise yet concise.\n"
)
QUANTIZATIONS = ("none", "8bit", "4bit")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")


@dataclass(frozen=True)
class CaptionOptions:
    """How to caption one run (the seed's infer.py generation settings are the defaults).

    Attributes:
        prompt: the user turn; an `<image>` token in it marks where the image goes (the start when absent).
        max_new_tokens: most tokens generated per caption (seed: 256).
        temperature: sampling temperature (seed: 0.2); ignored when `do_sample` is False.
        do_sample: sample (seed) or decode greedily.
        num_beams: beam count (seed: 1).
        seed: makes a sampled caption reproducible on the same device and dtype.
    """

    prompt: str = SEED_PROMPT
    max_new_tokens: int = 256
    temperature: float = 0.2
    do_sample: bool = True
    num_beams: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.check()  # valid by construction: a bad option fails where it is made

    def check(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("caption prompt: must be a non-empty string")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be a positive integer, got {self.max_new_tokens!r}")
        if self.do_sample and not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature: must be > 0 when sampling, got {self.temperature!r}")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams: must be a positive integer, got {self.num_beams!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {self.seed!r}")
