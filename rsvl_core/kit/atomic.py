"""Write files so that a reader never sees a partial one, and share an output folder between runs safely.

- `atomic_path`: a temp file in the same folder, renamed over the target on success, removed on error.
  Temp names carry their owner (`.<stem>.rsvl-<host>-<pid>.<random><suffix>.tmp`), so a later run can
  remove what a killed run left behind (`remove_stale_temporaries`) without touching a live run's files.
- `claim`: an exclusive claim file beside an output (`.<name>.claim`) while one run computes it, so
  concurrent runs into one folder split the work; a claim whose process is gone is taken over.
- `fit_name`: every name written here stays within the file system's name limit (255 bytes on most): a longer
  stem is cut and ends in `~<hash>` of the full name, so the same long name always gives the same short one.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
_OWNER = re.compile(r"\.rsvl-(?P<host>[A-Za-z0-9_.-]+)-(?P<pid>\d+)\.")
NAME_MAX = 255     # bytes of one file name on most file systems (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)
MKSTEMP_RANDOM = 8  # characters tempfile.mkstemp puts between prefix and suffix
HASH_CHARS = 10    # `~` + this many hex digits of the full name end a shortened stem


def name_limit(folder: str | Path) -> int:
    """The longest file name (bytes) `folder`'s file system takes (NAME_MAX when it does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def _cut(text: str, size: int) -> str:
    """`text` cut to at most `size` bytes of UTF-8, never mid-character (undecodable bytes dropped)."""
    return os.fsencode(text)[:max(size, 0)].decode("utf-8", "ignore")


def fit_stem(stem: str, room: int) -> str:
    """`stem` if it takes at most `room` bytes, else its head + `~<hash of the whole stem>` in `room` bytes."""
    if len(os.fsencode(stem)) <= room:
        return stem
    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:HASH_CHARS]
    return _cut(stem, room - HASH_CHARS - 1) + "~" + digest


def fit_name(name: str, reserve: int = 0, limit: int = NAME_MAX) -> str:
    """`name` (stem + suffix) shortened, if needed, so that it plus `reserve` more bytes fits `limit`."""
    path = Path(name)
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= 16 else ""
    stem = name[:len(name) - len(suffix)] if suffix else name
    return fit_stem(stem, limit - reserve - len(os.fsencode(suffix))) + suffix


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def readable_files(folder: Path) -> None:
    """Give files a library wrote with mode 0600 (safetensors' temp-and-rename) the umask's normal mode."""
    mode = _default_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)


def owner_tag() -> str:
    """This process's mark in temp and claim names: `rsvl-<host>-<pid>`."""
    return f"rsvl-{_HOST}-{os.getpid()}"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fixed = len(os.fsencode(f"..{owner_tag()}.{path.suffix}.tmp")) + MKSTEMP_RANDOM
    stem = fit_stem(path.stem, name_limit(path.parent) - fixed)  # a long output name: a short temp name
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.{owner_tag()}.", suffix=f"{path.suffix}.tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def this_host() -> str:
    """This machine's name as owner tags and claims write it (and `process_alive` compares it)."""
    return _HOST


def process_alive(host: str, pid: int) -> bool:
    """Whether process `pid` on `host` may still run (another host's: assume it does; a zombie, killed but not yet
    reaped by its parent, counts as gone)."""
    if host != _HOST:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal check above is all there is
    return state not in ("Z", "X")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove our temp files in `folder` whose process is gone (a run killed with -9); returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _OWNER.search(entry.name)
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and match and entry.is_file() \
                and not process_alive(match["host"], int(match["pid"])):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


class Claim:
    """An exclusive claim on computing one output, held in `.<name>.claim` beside it."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        limit = name_limit(self.target.parent) if self.target.parent.is_dir() else NAME_MAX
        self.path = self.target.with_name(f".{fit_name(self.target.name, len('..claim'), limit)}.claim")
        self.held = False

    def acquire(self) -> str | None:
        """Take the claim; None when taken, else who holds it (`host pid`). A dead holder's claim is taken over."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not process_alive(*holder):
                    self.path.unlink(missing_ok=True)  # left by a killed run: take it over
                    continue
                return f"{holder[0]} pid {holder[1]}" if holder else "another run"
            with os.fdopen(fd, "w") as f:
                f.write(f"{_HOST} {os.getpid()}\n")
            self.held = True
            return None
        return "another run"

    def _holder(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_output_folder(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written there; OSError/NotADirectoryError otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f".{owner_tag()}.probe.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(probe)
