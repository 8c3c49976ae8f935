"""The ComfyUI host: its memory manager, progress bar, Cancel, devices and folders as `rsvl_core.hosted.Host`; the
IMAGE layout; progress with previews; engine errors as one line naming the node."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..rsvl_core.hosted.handles import NodeError as NodeError  # the one error the nodes raise, re-exported
from ..rsvl_core.kit.errors import RsvlError
from ..rsvl_core.kit.progress import preview_image
from ..rsvl_core.weights.checkpoint import first_line


class ComfyHost:
    """`rsvl_core.hosted.Host` backed by ComfyUI: its memory manager, progress bar, interrupt flag and devices."""

    @property
    def preview_size(self) -> int:
        from comfy.cli_args import args

        return int(getattr(args, "preview_size", 512) or 512)

    @property
    def previews(self) -> bool:
        """Whether step previews are wanted: ComfyUI's preview method (--preview-method, or the one the
        frontend sends with a prompt) is not "none", as for core's samplers."""
        from comfy.cli_args import args

        method = getattr(args, "preview_method", "none")
        return str(getattr(method, "value", method)) != "none"

    def torch_device(self, choice: str) -> torch.device:
        return torch.device("cpu") if choice == "cpu" else memory_manager().get_torch_device()

    def offload_device(self, choice: str) -> torch.device:
        return torch.device("cpu") if choice == "cpu" else memory_manager().unet_offload_device()

    def register(self, module: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
        """A classic ModelPatcher, never CoreModelPatcher (ComfyUI's dynamic-VRAM patcher where comfy-aimdo is on):
        our modules are plain torch layers, which a dynamic patcher would move whole anyway, and it refuses the full
        load `load` asks for (rsvl_core/hosted/dynamic_vram.py)."""
        from comfy.model_patcher import ModelPatcher

        return ModelPatcher(module, load_device=load_device, offload_device=offload_device)

    def load(self, patchers: list, memory_required: int = 0) -> None:
        # Our modules are plain torch modules (no comfy.ops weight casting): load them whole. A dynamic patcher of
        # core's in the list (MODEL_PATCH) is loaded its own way: force_full_load never reaches its load().
        memory_manager().load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)

    def progress_bar(self, total: int):
        import comfy.utils

        return comfy.utils.ProgressBar(total)

    def check_interrupt(self) -> None:
        memory_manager().throw_exception_if_processing_interrupted()

    def intermediate_device(self) -> torch.device:
        return memory_manager().intermediate_device()

    def free_ram(self) -> int | None:
        """Free system memory in bytes, as ComfyUI's memory manager sees it (None if it cannot tell)."""
        try:
            return int(memory_manager().get_free_memory(torch.device("cpu")))
        except Exception:  # an estimate only: never fail a run for it
            return None

    def send_text(self, node_id: str | None, text: str) -> None:
        """Show `text` on the node while it runs (progress_text: the frontend shows it in its own overlay)."""
        if node_id is None:
            return
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(text, node_id)
        except (ImportError, AttributeError):  # no server (tests of the node logic)
            pass


HOST = ComfyHost()


def memory_manager():
    """ComfyUI's model_management module (imported on use: it exists only inside ComfyUI, and needs its args)."""
    import comfy.model_management as module

    return module


def folder_paths():
    """ComfyUI's folder_paths module (imported when a node asks: it exists only inside ComfyUI)."""
    import folder_paths as module

    return module


def to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, 3, H, W) float32 in [0, 1] (alpha dropped, grey repeated)."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise NodeError(f"expected an IMAGE of shape (B, H, W, C), got {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 1:
        image = image.expand(-1, -1, -1, 3)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise NodeError(f"expected 1, 3 or 4 colour channels, got {channels}")
    return image.movedim(-1, 1).float().clamp(0, 1).contiguous()


def to_bhwc(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) -> ComfyUI IMAGE (B, H, W, 3) float32 in [0, 1] on `device`."""
    return image.movedim(1, -1).float().clamp(0, 1).contiguous().to(device)


class ProgressReporter:
    """The engine's callback(step, total, stage, preview) -> the host's progress bar, previews and Cancel.

    The host bar's update raises when the user presses Cancel (ComfyUI's hook does); `check_interrupt` is
    called as well, so a run stops within one step either way.
    """

    def __init__(self, host: ComfyHost, previews: bool | None = None,
                 slow_warning: Callable[[float, int, int], None] | None = None) -> None:
        self.host = host
        self.bar = None
        # as core's samplers: step previews only when the user's preview method asks for them (a preview image
        # also makes the frontend grow the node to show it)
        self.previews = host.previews if previews is None else previews
        self.stages: list[str] = []
        self.slow_warning = slow_warning  # called once, after the first step, with (seconds left, step, total)
        self.started = time.monotonic()

    def __call__(self, step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        self.host.check_interrupt()
        if self.slow_warning is not None and step >= 1:
            elapsed = time.monotonic() - self.started
            warn, self.slow_warning = self.slow_warning, None
            warn(elapsed / step * max(total - step, 0), step, total)
        if not self.stages or self.stages[-1] != stage:
            self.stages.append(stage)
        if self.bar is None:
            self.bar = self.host.progress_bar(max(total, 1))
        image = None
        if preview is not None and self.previews and preview.shape[1] == 3:  # the stage runs turn latents to RGB
            image = ("JPEG", preview_image(preview, self.host.preview_size), self.host.preview_size)
        self.bar.update_absolute(min(step, total), max(total, 1), image)


@contextmanager
def user_errors(label: str) -> Iterator[None]:
    """Engine errors and bad settings -> one-line NodeError naming the node by `node_label` (its display name
    and id: ComfyUI runs a copy of the node class, so the class name would read "...Clone").
    Cancel and OOM pass untouched."""
    try:
        yield
    except (RsvlError, ValueError, FileNotFoundError) as exc:
        # our own one-line messages whole; an engine's or library's first line, capped
        message = (str(exc).strip().splitlines() or [''])[0] if isinstance(exc, RsvlError) else first_line(exc)
        raise NodeError(message if message.startswith(label) else f"{label}: {message}") from None

