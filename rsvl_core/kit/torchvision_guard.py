"""Let `import torchvision` succeed beside a CPU-only torch when torchvision's compiled ops cannot load.

PyPI has no CPU build of torchvision for Linux x86_64: its wheels are CUDA builds whose `_C.so` links
`libtorch_cuda.so`, which a `+cpu` torch does not ship. torchvision then marks its ops unavailable, but its
`_meta_registrations.py` still registers fake kernels for `torchvision::nms` / `::qnms` unconditionally, and
`import torchvision` dies with "operator torchvision::nms does not exist" — and with it spandrel (stage-1
models), transformers' image processors and LPIPS, none of which call those ops.

`install()` puts a finder in front of `sys.meta_path` that acts once, the first time anything imports
torchvision: on a CPU-only torch, if torchvision's `_C` library does not load, it declares the schemas of
those two ops (no kernels) so the registrations succeed. Calling the ops still raises torchvision's own
"Couldn't load custom C++ ops" error. A matching torchvision build (or any CUDA torch) is left untouched.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

# The ops torchvision registers fake kernels for without first checking that its C++ library loaded.
UNGUARDED_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_declared: list[Any] = []  # the torch.library.Library holding the declarations (must stay alive)


def torchvision_ops_library() -> Path | None:
    """Path of the installed torchvision's compiled ops (`_C*.so`), without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / f"_C{suffix}").is_file():
            return folder / f"_C{suffix}"
    return None


def ops_library_loads(path: Path) -> bool:
    """Whether torch can load torchvision's compiled ops (what torchvision itself tries first)."""
    import torch

    try:
        torch.ops.load_library(str(path))
    except (OSError, ImportError) as error:
        LOG.info("torchvision's compiled ops do not load beside this torch (%s): ops declared without kernels",
                 error)
        return False
    return True


def declare_unguarded_ops() -> None:
    """Declare the schemas of torchvision's unguarded ops, with no kernels, once per process."""
    import torch

    if _declared:
        return
    library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (kept alive in _declared)
    for schema in UNGUARDED_OPS.values():
        library.define(schema)
    _declared.append(library)


def prepare_torchvision() -> bool:
    """Make a CUDA-built torchvision importable on a CPU-only torch; True when declarations were needed."""
    import torch

    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return False  # a GPU build of torch loads any matching torchvision as it is
    library = torchvision_ops_library()
    if library is None or ops_library_loads(library):
        return False
    declare_unguarded_ops()
    return True


class TorchvisionImportGuard:
    """A meta-path finder that runs `prepare_torchvision()` just before torchvision is first imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        """Prepare on the first `import torchvision`, then step aside (the normal finders import it)."""
        if name == "torchvision":
            uninstall()
            try:
                prepare_torchvision()
            except Exception as error:  # never turn an import into a different failure
                LOG.warning("torchvision import guard failed: %s", error)
        return None


def install() -> None:
    """Install the guard (idempotent); a no-op once torchvision has been imported."""
    if "torchvision" in sys.modules or any(isinstance(f, TorchvisionImportGuard) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, TorchvisionImportGuard())


def uninstall() -> None:
    """Remove the guard from `sys.meta_path`."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchvisionImportGuard)]
