"""The seed's PEFT LoRA adapter: read it, rename the ORIGINAL LLaVA-NeXT module names to transformers', apply it.

The seed trained its adapter on the original LLaVA-NeXT code base (`LlavaLlamaForCausalLM`), so the adapter
names modules as that code does, under PEFT's `base_model.model.` prefix:

    original (seed)                                          transformers 5.x LlavaNextForConditionalGeneration
    model.layers.N.self_attn.q_proj                          model.language_model.layers.N.self_attn.q_proj
    model.embed_tokens / model.norm                          model.language_model.embed_tokens / .norm
    model.mm_projector.0 / model.mm_projector.2              model.multi_modal_projector.linear_1 / linear_2
    model.vision_tower.vision_tower.vision_model.encoder...  model.vision_tower.encoder...  (4.x: .vision_model.)
    model.image_newline                                      model.image_newline
    lm_head                                                  lm_head

Adapters saved against transformers 4.x (`language_model.model.layers...`) or 5.x names are accepted too. Every
candidate name is checked against the live model's modules, so a layout change in transformers fails loudly:
every adapter tensor must land on a module, or loading fails naming the tensors that did not. The LoRA layers
themselves are peft's (`LoraModel`), so scaling (alpha / r, rsLoRA, rank/alpha patterns) and merging are peft's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..kit.errors import CheckpointError
from ..weights.checkpoint import read_json_config, read_state_dict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# The original LLaVA training code saves the trained non-LoRA weights (the mm_projector) here, beside the adapter.
NON_LORA_WEIGHTS = ("non_lora_trainables.safetensors", "non_lora_trainables.bin")
EXPECTED = "a PEFT LoRA adapter for LLaVA-NeXT (adapter_config.json + adapter_model.safetensors or .bin)"
ADAPTER_NAME = "rsvl"
PEFT_PREFIX = "base_model.model."

# (pattern on the original module name, replacements tried in order); the first one naming a live module wins.
_RENAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"^model\.mm_projector\.0(?=\.|$)", ("model.multi_modal_projector.linear_1",)),
    (r"^model\.mm_projector\.2(?=\.|$)", ("model.multi_modal_projector.linear_2",)),
    # CLIPVisionTower.vision_tower is a CLIPVisionModel; transformers 5 flattens its `vision_model` level.
    (r"^model\.vision_tower\.vision_tower\.vision_model(?=\.|$)",
     ("model.vision_tower", "model.vision_tower.vision_model")),
    (r"^model\.vision_tower\.vision_tower(?=\.|$)", ("model.vision_tower",)),
    (r"^model\.image_newline$", ("model.image_newline",)),
    (r"^model\.(?=layers\.|embed_tokens$|norm$)", ("model.language_model.",)),
    # transformers 4.x LLaVA-NeXT names
    (r"^language_model\.lm_head$", ("lm_head",)),
    (r"^language_model\.model(?=\.|$)", ("model.language_model",)),
    (r"^multi_modal_projector(?=\.|$)", ("model.multi_modal_projector",)),
    (r"^vision_tower\.vision_model(?=\.|$)", ("model.vision_tower", "model.vision_tower.vision_model")),
    (r"^vision_tower(?=\.|$)", ("model.vision_tower",)),
    (r"^image_newline$", ("model.image_newline",)),
)
# `<module>.<lora kind>[.<adapter name>][.weight|.bias]`, as PEFT saves it (the adapter name is usually stripped).
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?!weight$|bias$)(?P<adapter>[^.]+))?(?:\.(?P<param>weight|bias))?$"
)
# Old PEFT versions kept the wrapper path in modules_to_save keys.
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save(?:\.[^.]+)?(?=\.(?:weight|bias)$)")


@dataclass
class LoraAdapter:
    """An adapter as read from disk: its config, LoRA tensors and full replacement weights (original names)."""

    folder: Path
    weights_path: Path
    config: dict
    lora: dict[str, dict[str, torch.Tensor]]  # original module -> {"lora_A.weight": A, "lora_B.weight": B, ...}
    full: dict[str, torch.Tensor]  # original parameter name -> replacement (modules_to_save, trained biases)

    @property
    def tensor_count(self) -> int:
        """How many tensors the file holds."""
        return sum(len(v) for v in self.lora.values()) + len(self.full)


@dataclass
class AdapterReport:
    """What applying an adapter did (every entry in transformers' names)."""

    lora_modules: list[str] = field(default_factory=list)
    replaced_parameters: list[str] = field(default_factory=list)
    tensors_applied: int = 0
    merged: bool = False


def find_adapter_weights(folder: Path) -> Path:
    """`adapter_model.safetensors`, else `adapter_model.bin`, in `folder`."""
    for name in ADAPTER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(folder / ADAPTER_WEIGHTS[0], "adapter weights not found (nor adapter_model.bin)", EXPECTED)


def read_adapter(folder: str | Path) -> LoraAdapter:
    """Read `adapter_config.json` and the adapter weights (safetensors, or .bin via weights_only torch.load)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "adapter folder not found", EXPECTED)
    config_path = folder / ADAPTER_CONFIG
    config = read_json_config(config_path, EXPECTED)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise CheckpointError(config_path, f"peft_type is {peft_type!r}", "a LORA adapter")
    for name in ("r", "lora_alpha"):
        if not isinstance(config.get(name), (int, float)) or config[name] <= 0:
            raise CheckpointError(config_path, f"{name!r} is missing or not a positive number", EXPECTED)
    weights_path = find_adapter_weights(folder)
    state = read_state_dict(weights_path, EXPECTED)
    for name in NON_LORA_WEIGHTS:
        if (folder / name).is_file():
            extra = read_state_dict(folder / name, "LLaVA's non-LoRA trainables (projector weights)")
            state.update({k: v for k, v in extra.items() if k not in state})
            break

    lora: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        match = _LORA_KEY.match(name)
        if match:
            part = match["kind"] + (f".{match['param']}" if match["param"] else "")
            lora.setdefault(match["module"], {})[part] = tensor
        elif ".lora_" in name:
            raise CheckpointError(weights_path, f"unrecognised LoRA tensor {key!r}", EXPECTED)
        else:
            full[_MODULES_TO_SAVE.sub("", name)] = tensor
    for module, parts in lora.items():
        kinds = {p.split(".")[0] for p in parts}
        pairs = ({"lora_A", "lora_B"}, {"lora_embedding_A", "lora_embedding_B"})
        if not any(pair <= kinds for pair in pairs):
            raise CheckpointError(weights_path, f"{module}: LoRA tensors {sorted(parts)} lack their A/B partner",
                                  EXPECTED)
    return LoraAdapter(folder, weights_path, config, lora, full)


def map_module_name(name: str, module_names: set[str] | dict) -> str | None:
    """The transformers module (or parameter) name for an original LLaVA-NeXT one, or None when none exists."""
    for pattern, replacements in _RENAMES:
        if re.search(pattern, name):
            for replacement in replacements:
                candidate = re.sub(pattern, replacement, name, count=1)
                if candidate in module_names:
                    return candidate
            return None
    return name if name in module_names else None


def _map_parameter(name: str, modules: dict[str, nn.Module], params: dict[str, nn.Parameter]) -> str | None:
    """Map `<module>.<param>` (or a bare parameter such as `model.image_newline`)."""
    owner, _, leaf = name.rpartition(".")
    direct = map_module_name(name, params)
    if direct is not None:
        return direct
    module = map_module_name(owner, modules) if owner else None
    return f"{module}.{leaf}" if module is not None and f"{module}.{leaf}" in params else None


def _covers(entry: str, name: str) -> bool:
    """Whether a modules_to_save entry (e.g. "lm_head", "mm_projector") names `name` or a module above it."""
    return re.search(rf"(^|\.){re.escape(entry)}(\.|$)", name) is not None


def _lora_config(adapter: LoraAdapter, mapping: dict[str, str]):
    """A peft LoraConfig targeting exactly the mapped modules, with per-module rank/alpha when they differ."""
    from peft import LoraConfig
    from peft.utils.other import get_pattern_key

    cfg = adapter.config
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    alpha_pattern = cfg.get("alpha_pattern") or {}
    rank_pattern, alpha_out = {}, {}
    for original, mapped in mapping.items():
        parts = adapter.lora[original]
        a = parts.get("lora_A.weight", parts.get("lora_embedding_A"))
        rank = int(a.shape[0]) if a is not None else r
        if rank != r:
            rank_pattern[re.escape(mapped)] = rank
        if alpha_pattern:
            key = get_pattern_key(list(alpha_pattern), original)
            if key in alpha_pattern:
                alpha_out[re.escape(mapped)] = float(alpha_pattern[key])
    return LoraConfig(
        r=r, lora_alpha=alpha, target_modules=sorted(mapping.values()), lora_dropout=0.0, bias="none",
        fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)), use_rslora=bool(cfg.get("use_rslora", False)),
        use_dora=bool(cfg.get("use_dora", False)), lora_bias=bool(cfg.get("lora_bias", False)),
        rank_pattern=rank_pattern, alpha_pattern=alpha_out, inference_mode=True,
    )


def apply_adapter(model: nn.Module, adapter: LoraAdapter | str | Path, merge: bool = False) -> tuple[nn.Module,
                                                                                                    AdapterReport]:
    """Apply a LoRA adapter to a loaded LLaVA-NeXT model; returns the model (a new object when merged) and a report.

    Every tensor must land: LoRA A/B on a module of the right kind and shape, every other tensor
    (`modules_to_save` such as `lm_head` or `embed_tokens`, trained biases) on a parameter of the same shape.
    `merge=True` folds W + scale * B @ A into the weights and removes the LoRA layers (faster inference).
    """
    from peft.tuners.lora import LoraModel

    if not isinstance(adapter, LoraAdapter):
        adapter = read_adapter(adapter)
    path = adapter.weights_path
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())

    mapping, full_mapping = _map_adapter(adapter, modules, params)

    report = AdapterReport(lora_modules=sorted(mapping.values()), replaced_parameters=sorted(full_mapping.values()))
    with torch.no_grad():
        for original, mapped in full_mapping.items():
            params[mapped].copy_(adapter.full[original].to(params[mapped].dtype))
            report.tensors_applied += 1
    if mapping:
        lora_model = LoraModel(model, _lora_config(adapter, mapping), ADAPTER_NAME)
        live = dict(model.named_parameters())
        with torch.no_grad():
            for original, mapped in mapping.items():
                for part, tensor in adapter.lora[original].items():
                    kind, _, leaf = part.partition(".")
                    target = next((n for n in (f"{mapped}.{kind}.{ADAPTER_NAME}.{leaf or 'weight'}",
                                              f"{mapped}.{kind}.{ADAPTER_NAME}") if n in live), None)
                    if target is None or live[target].shape != tensor.shape:
                        raise CheckpointError(path, f"{original}.{part} did not land on the LoRA layer of {mapped}",
                                              "peft LoRA layer names")
                    live[target].copy_(tensor.to(live[target].dtype))
                    report.tensors_applied += 1
        if merge:
            model = lora_model.merge_and_unload()
            report.merged = True
        else:
            model = lora_model.model
    if report.tensors_applied != adapter.tensor_count:
        raise CheckpointError(path, f"applied {report.tensors_applied} of {adapter.tensor_count} tensors", EXPECTED)
    model.eval()
    return model, report


def _map_adapter(adapter: LoraAdapter, modules: dict[str, nn.Module], params: dict[str, nn.Parameter]
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """Where each adapter tensor lands: LoRA pairs on modules, full tensors on parameters (adapter name -> model
    name); a CheckpointError for any tensor that matches nothing, has the wrong shape, or is missing."""
    path = adapter.weights_path
    mapping: dict[str, str] = {}
    unmapped: list[str] = []
    for original, parts in adapter.lora.items():
        mapped = map_module_name(original, modules)
        if mapped is None:
            unmapped.extend(f"{original}.{p}" for p in sorted(parts))
            continue
        _check_lora_shapes(path, original, mapped, modules[mapped], parts)
        mapping[original] = mapped
    full_mapping: dict[str, str] = {}
    for original, tensor in adapter.full.items():
        mapped = _map_parameter(original, modules, params)
        if mapped is None:
            unmapped.append(original)
            continue
        if tuple(params[mapped].shape) != tuple(tensor.shape):
            raise CheckpointError(path, f"{original} has shape {tuple(tensor.shape)} but the model's {mapped} is "
                                  f"{tuple(params[mapped].shape)}", "an adapter trained for this base model")
        full_mapping[original] = mapped
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (f" (+{len(unmapped) - 5} more)" if len(unmapped) > 5 else "")
        raise CheckpointError(path, f"{len(unmapped)} adapter tensor(s) match no module of the model: {shown}",
                              "names of LLaVA-NeXT modules (original or transformers layout)")
    for entry in adapter.config.get("modules_to_save") or []:
        if not any(_covers(entry, name) for name in adapter.full):
            raise CheckpointError(path, f"modules_to_save lists {entry!r} but the file holds no weights for it",
                                  EXPECTED)
    return mapping, full_mapping


def _check_lora_shapes(path: Path, original: str, mapped: str, module: nn.Module, parts: dict[str, torch.Tensor]
                       ) -> None:
    """Refuse LoRA factors whose shapes cannot belong to the module (a different base model)."""
    if "lora_A.weight" in parts:
        if not isinstance(module, nn.Linear):
            raise CheckpointError(path, f"{original}: LoRA A/B target {mapped}, a {type(module).__name__}",
                                  "LoRA on Linear layers (or lora_embedding_A/B on embeddings)")
        a, b = parts["lora_A.weight"], parts["lora_B.weight"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != module.in_features or b.shape[0] != module.out_features \
                or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                path, f"{original}: LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit {mapped} "
                f"({module.in_features} -> {module.out_features})", "an adapter trained for this base model")
    elif not isinstance(module, nn.Embedding):
        raise CheckpointError(path, f"{original}: embedding LoRA on {mapped}, a {type(module).__name__}", EXPECTED)
