"""Key names between the original SGM/LDM UNet layout (single-file SDXL, SUPIR) and our modules.

The SGM UNet numbers its blocks flatly (`input_blocks.4.1`, `output_blocks.2.2.conv`); diffusers
nests them (`down_blocks.1.attentions.0`, `up_blocks.0.upsamplers.0.conv`). The table below is
derived from the config, so it covers the tiny test models and SDXL alike, in both directions.
Transformer internals (`transformer_blocks.*`, `proj_in`, ...) have the same names on both sides.
"""

from __future__ import annotations

import torch

from ..nets.config import RefinerConfig

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
    """(the longest block prefix of `key` in `prefixes`, the rest of the key), or None."""
    parts = key.split(".")
    for length in range(min(5, len(parts)), 0, -1):
        head = ".".join(parts[:length])
        if head in prefixes:
            return head, ".".join(parts[length:])
    return None


def _rename_resnet_part(rest: str, renames: dict[str, str]) -> str:
    """Rename the leading layer name inside a ResBlock (`in_layers.0.weight` <-> `norm1.weight`)."""
    for old, new in renames.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _rename(state: dict[str, torch.Tensor], table: dict[str, tuple[str, bool]], renames: dict[str, str]
            ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply a block-prefix table (and the ResBlock renames under resnet prefixes); connectors pass unchanged."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith("project_modules."):
            out[key] = value
            continue
        found = _split(key, table)
        if found is None:
            unknown.append(key)
            continue
        head, rest = found
        target, is_resnet = table[head]
        if is_resnet:
            rest = _rename_resnet_part(rest, renames)
        out[f"{target}.{rest}" if rest else target] = value
    return out, unknown


def ldm_to_ours(state: dict[str, torch.Tensor], config: RefinerConfig, decoder: bool = True,
                hint: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an SGM-layout state dict (prefix already stripped); returns (renamed, keys not understood)."""
    renamed, unknown = _rename(state, block_prefix_table(config, decoder, hint), _RESNET_RENAMES)
    if not decoder:  # the control net has no connectors: there they are stray keys like any other
        strays = [k for k in renamed if k.startswith("project_modules.")]
        unknown += strays
        for key in strays:
            del renamed[key]
    return renamed, unknown


def ours_to_ldm(state: dict[str, torch.Tensor], config: RefinerConfig, decoder: bool = True,
                hint: bool = False) -> dict[str, torch.Tensor]:
    """The inverse of `ldm_to_ours` (used to write files in the original layout)."""
    table = {ours: (ldm, is_resnet) for ldm, (ours, is_resnet) in block_prefix_table(config, decoder, hint).items()}
    renamed, unknown = _rename(state, table, _RESNET_RENAMES_BACK)
    if unknown:
        raise KeyError(f"no original-layout name for {unknown[0]!r}")
    return renamed
