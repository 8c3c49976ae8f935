"""Package exports loaded on first use (PEP 562), so importing one light module of a package (the options tables a
command line parser needs) does not import every heavy one beside it (diffusers, transformers, spandrel)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each name in `homes` (name -> its module, relative to the package)
    is imported from there when first asked for, then kept in the package like a normal import."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
