"""File names a host's nodes take, resolved inside the host's own folders (ComfyUI's `folder_paths`, passed in):
inputs inside input/, outputs inside output/. A name with `..`, an absolute path, or one whose symlinks lead out
of the folder is refused in one line naming the name and the folder, so nothing outside those folders is read
or written through the API. Usable from a node's validate_inputs (no file is opened or made here)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..kit.errors import RsvlError

_DRIVE = re.compile(r"^[A-Za-z]:")  # "C:..." is absolute (or drive-relative) on Windows: refused everywhere


class OutsideFolderError(RsvlError, ValueError):
    """A file name that would leave the host's input/ or output/ folder."""


def resolve_input(folder_paths, name: str) -> Path:
    """`name` (as a node's input or /upload/image's answer gives it: "scene.tif", "sub/scene.tif", optionally
    with ComfyUI's " [input]" annotation) -> its path inside ComfyUI's input folder. Existence is not checked."""
    return _inside(folder_paths.get_input_directory(), _strip(name, "input"), name, "input")


def resolve_output(folder_paths, name: str) -> Path:
    """`name` (a file name or prefix, possibly with sub-folders: "rsvl/scene") -> its path inside ComfyUI's
    output folder. Nothing is created; folders on the way may not exist yet."""
    return _inside(folder_paths.get_output_directory(), _strip(name, "output"), name, "output")


def _strip(name: str, kind: str) -> str:
    text = str(name).strip()
    suffix = f"[{kind}]"
    if text.endswith(suffix):  # ComfyUI's annotation of the folder a name is in; only this node's folder
        text = text[: -len(suffix)].rstrip()
    return text


def _inside(folder: str, relative: str, given: str, kind: str) -> Path:
    def refuse(why: str) -> OutsideFolderError:
        return OutsideFolderError(f"{given!r} refused: {why}; file names must stay inside ComfyUI's {kind} "
                                  f"folder {folder}")

    if not relative:
        raise refuse("an empty file name")
    if "\x00" in relative:
        raise refuse("a NUL character in the name")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or _DRIVE.match(relative):
        raise refuse("an absolute path")
    if any(part == ".." for part in re.split(r"[\\/]+", relative)):
        raise refuse("'..' in the path")
    base = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(base, relative))  # symlinks on the way (existing parts) followed
    if os.path.commonpath([base, target]) != base or target == base:
        raise refuse("a symlink that leads out of the folder" if target != base else "it names the folder itself")
    return Path(target)
