"""The one table of precisions and the device choices every face offers (CLI flags, node inputs, loaders)."""

from __future__ import annotations

import torch

from .errors import RsvlError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # "auto": bf16 (or fp16) on an accelerator, fp32 on the CPU


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """"fp32" / "bf16" / "fp16" (or a torch dtype) -> the torch dtype; ValueError naming the choices."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name}")
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def auto_dtype(device: torch.device) -> str:
    """'auto' resolved: bf16 on a bf16-capable CUDA device, fp16 on other accelerators, fp32 on the CPU."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32" if device.type == "cpu" else "fp16"


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...; RsvlError when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RsvlError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RsvlError(f"device {name}: CUDA is not available in this PyTorch build")
    return device


def release_freed_host_memory() -> bool:
    """Give memory freed after a load back to the OS (glibc `malloc_trim`); True when that was possible.

    Loading converts weights (fp16 file -> fp32 tensors, key renames): the temporaries are freed, but glibc keeps
    many of those pages in its heap, so a long-running host (ComfyUI) would hold hundreds of MiB it does not use.
    A no-op where the C library has no `malloc_trim` (macOS, Windows, musl)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim(0)
    return True
