"""Block-wise offload of the refiner's UNet and control net: blocks come to the device as they run.

Each swappable block (a ResNet or transformer block of the SDXL down / middle / up path, in the UNet and in
GLVControl) keeps its weights in host memory (pinned on CUDA); a forward pre-hook copies them to the device
just before the block runs, and the least recently used block is dropped from the device first when `K`
blocks are already there. So at most K blocks' weights are on the device at any moment, beside the rest of
the refiner (embeddings, conv_in/out, connectors, VAE, text encoders). The same idea as SeedVR2's BlockSwap;
the code is ours. Results are bit-identical: the weights are copied, never converted.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .placement import LocalPlacement, parts


def swappable_blocks(refiner: Any) -> list[nn.Module]:
    """The refiner's UNet and control-net blocks, in the order they run (what block swap moves)."""
    blocks: list[nn.Module] = []
    for network in (refiner.control, refiner.unet):
        for path in ("down_blocks", "mid_block", "up_blocks"):
            container = getattr(network, path, None)
            if container is None:
                continue
            for block in (container if isinstance(container, nn.ModuleList) else [container]):
                for name in ("resnets", "attentions"):
                    blocks.extend(getattr(block, name, None) or [])
    return blocks


class BlockSwap:
    """Keeps at most `resident` of `blocks` on `device`; the rest wait in host memory (see the module doc).

    `max_resident` records the most blocks that were ever on the device at once, `loads` how many copies
    were made (for tests and the run record).
    """

    def __init__(self, blocks: list[nn.Module], device: torch.device | str, resident: int) -> None:
        if resident < 1:
            raise ValueError(f"block swap: at least one block must fit on the device, got {resident}")
        self.blocks, self.device, self.resident = blocks, torch.device(device), resident
        self.on_device: OrderedDict[int, nn.Module] = OrderedDict()
        self.host: dict[int, dict[str, torch.Tensor]] = {}
        self.hooks: list[Any] = []
        self.max_resident = 0
        self.loads = 0

    def attach(self) -> None:
        """Keep every block's weights in host memory and hook it to come to the device when it runs."""
        pin = self.device.type == "cuda"
        for block in self.blocks:
            tensors = {}
            for name, tensor in _tensors(block):
                host = tensor.detach().to("cpu")
                tensors[name] = host.pin_memory() if pin else host
            self.host[id(block)] = tensors
            _assign(block, tensors)
            self.hooks.append(block.register_forward_pre_hook(self._before))

    def detach(self) -> None:
        """Remove the hooks and bring every block back to host memory (the weights stay intact)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        self.offload_all()

    def offload_all(self) -> None:
        """Send every block on the device back to host memory (after the stage ran)."""
        for key in list(self.on_device):
            self._evict(key)

    def _before(self, block: nn.Module, args) -> None:
        key = id(block)
        if key in self.on_device:
            self.on_device.move_to_end(key)
            return
        while len(self.on_device) >= self.resident:
            self._evict(next(iter(self.on_device)))
        _assign(block, {name: t.to(self.device, non_blocking=True, copy=True)
                        for name, t in self.host[key].items()})
        self.on_device[key] = block
        self.loads += 1
        self.max_resident = max(self.max_resident, len(self.on_device))

    def _evict(self, key: int) -> None:
        block = self.on_device.pop(key)
        _assign(block, self.host[key])  # the device copy is freed with its last reference


def _tensors(block: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*block.named_parameters(), *block.named_buffers()]


def _assign(block: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Point each named parameter / buffer of `block` at the given tensor (no copy)."""
    for name, tensor in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = block.get_submodule(owner_name) if owner_name else block
        if leaf in owner._parameters:
            owner._parameters[leaf].data = tensor
        else:
            owner._buffers[leaf] = tensor


class BlockSwapPlacement(LocalPlacement):
    """A `LocalPlacement` whose refiner keeps at most `resident` UNet / control-net blocks on the device.

    Every other module moves as the plan says (sequential or resident); the blocks are swapped in as they
    run, and all go back to host memory when the refiner is released.
    """

    def __init__(self, device: torch.device | str, requested: str = "sequential", resident: int = 4) -> None:
        super().__init__(device, requested)
        self.resident = resident
        self.swaps: dict[str, BlockSwap] = {}

    @property
    def plan(self) -> str:
        return f"{self.current} + block swap ({self.resident} blocks)"

    def acquire(self, stage: str, model: Any, memory_required: int = 0) -> None:
        if stage != "refine":
            super().acquire(stage, model, memory_required)
            return
        self.placed[stage] = model
        if stage not in self.swaps:
            self.swaps[stage] = BlockSwap(swappable_blocks(model), self.device, self.resident)
            self.swaps[stage].attach()
        _move_except(model, self.device, self.swaps[stage].blocks)

    def release(self, stage: str, model: Any) -> None:
        if stage != "refine":
            super().release(stage, model)
            return
        self.swaps[stage].offload_all()
        if self.current == "sequential":
            _move_except(model, torch.device("cpu"), self.swaps[stage].blocks)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def _move_except(model: Any, device: torch.device, blocks: list[nn.Module]) -> None:
    """Move a stage's modules to `device`, leaving the swapped blocks where the swap keeps them."""
    skip = {id(t) for block in blocks for _, t in _tensors(block)}
    for module in parts(model):
        for sub in module.modules():
            for param in sub._parameters.values():
                if param is not None and id(param) not in skip:
                    param.data = param.data.to(device)
            for name, buffer in sub._buffers.items():
                if buffer is not None and id(buffer) not in skip:
                    sub._buffers[name] = buffer.to(device)
