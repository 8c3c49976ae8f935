"""Key names between the original SGM/LDM UNet layout (single-file SDXL, SUPIR) and our modules.

The SGM UNet numbers its blocks flatly (`input_blocks.4.1`, `output_blocks.2.2.conv`); diffusers
nests them (`down_blocks.1.attentions.0`, `up_blocks.0.upsamplers.0.conv`). The table below is
derived from the config, so it covers the tiny test models and SDXL alike, in both directions.
Transformer internals (`transformer_blocks.*`, `proj_in`, ...) have the same names on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import RefinerConfig

_RESNET_RENAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_RENAMES_BACK = {v: k for k, v in _RESNET_RENAMES.items()}


def block_prefix_table(config: RefinerConfig, decoder: bool = True, hint: bool = False) -> dict[str, tuple[str, bool]]:
    """SGM prefix -> (our prefix, is_resnet) for every block of the UNet (or of GLVControl)."""
    table: dict[str, tuple[str, bool]] = {
        "time_embed.0": ("time_embedding.linear_1", False),
        "time_embed.2": ("time_embedding.linear_2", False),
        "label_emb.0.0": ("add_embedding.linear_1", False),
        "label_emb.0.2": ("add_embedding.linear_2", False),
        "input_blocks.0.0": ("conv_in", False),
        "middle_block.0": ("mid_block.resnets.0", True),
        "middle_block.1": ("mid_block.attentions.0", False),
        "middle_block.2": ("mid_block.resnets.1", True),
    }
    n = 0
    for level in range(config.levels):
        for j in range(config.num_res_blocks):
            n += 1
            table[f"input_blocks.{n}.0"] = (f"down_blocks.{level}.resnets.{j}", True)
            if config.has_attention(level):
                table[f"input_blocks.{n}.1"] = (f"down_blocks.{level}.attentions.{j}", False)
        if level != config.levels - 1:
            n += 1
            table[f"input_blocks.{n}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", False)
    if hint:
        table["input_hint_block.0"] = ("input_hint_block.0", False)
    if decoder:
        table["out.0"] = ("conv_norm_out", False)
        table["out.2"] = ("conv_out", False)
        n = 0
        for i in range(config.levels):
            level = config.levels - 1 - i
            for j in range(config.num_res_blocks + 1):
                table[f"output_blocks.{n}.0"] = (f"up_blocks.{i}.resnets.{j}", True)
                index = 1
                if config.has_attention(level):
                    table[f"output_blocks.{n}.1"] = (f"up_blocks.{i}.attentions.{j}", False)
                    index = 2
                if j == config.num_res_blocks and i != config.levels - 1:
                    table[f"output_blocks.{n}.{index}.conv"] = (f"up_blocks.{i}.upsamplers.0.conv", False)
                n += 1
    return table


def _split(key: str, prefixes: dict) -> tuple[str, str] | None:
    parts = key.split(".")
    for length in (4, 3, 2):
        head = ".".join(parts[:length])
        if head in prefixes:
            return head, ".".join(parts[length:])
    return None


def ldm_to_ours(state: dict[str, torch.Tensor], config: RefinerConfig, decoder: bool = True,
                hint: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an SGM-layout state dict (prefix already stripped); returns (renamed, keys not understood)."""
    table = block_prefix_table(config, decoder, hint)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if decoder and key.startswith("project_modules."):
            out[key] = value
            continue
        found = _split(key, table)
        if found is None:
            unknown.append(key)
            continue
        head, rest = found
        ours, is_resnet = table[head]
        if is_resnet:
            for old, new in _RESNET_RENAMES.items():
                if rest == old or rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
        out[f"{ours}.{rest}" if rest else ours] = value
    return out, unknown


def ours_to_ldm(state: dict[str, torch.Tensor], config: RefinerConfig, decoder: bool = True,
                hint: bool = False) -> dict[str, torch.Tensor]:
    """The inverse of `ldm_to_ours` (used to write files in the original layout)."""
    table = {ours: (ldm, is_resnet) for ldm, (ours, is_resnet) in block_prefix_table(config, decoder, hint).items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("project_modules."):
            out[key] = value
            continue
        parts = key.split(".")
        for length in (5, 4, 3, 2, 1):
            head = ".".join(parts[:length])
            if head in table:
                ldm, is_resnet = table[head]
                rest = ".".join(parts[length:])
                if is_resnet:
                    for new, old in _RESNET_RENAMES_BACK.items():
                        if rest == new or rest.startswith(new + "."):
                            rest = old + rest[len(new):]
                            break
                out[f"{ldm}.{rest}" if rest else ldm] = value
                break
        else:
            raise KeyError(f"no original-layout name for {key!r}")
    return out


def missing_and_unexpected(expected: Iterable[str], given: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sorted (missing, unexpected) key lists."""
    expected, given = set(expected), set(given)
    return sorted(expected - given), sorted(given - expected)
