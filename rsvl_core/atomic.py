"""Write files so that a reader never sees a partial one, and share an output folder between runs safely.

- `atomic_path`: a temp file in the same folder, renamed over the target on success, removed on error.
  Temp names carry their owner (`.<stem>.rsvl-<host>-<pid>.<random><suffix>.tmp`), so a later run can
  remove what a killed run left behind (`remove_stale_temporaries`) without touching a live run's files.
- `claim`: an exclusive claim file beside an output (`.<name>.claim`) while one run computes it, so
  concurrent runs into one folder split the work; a claim whose process is gone is taken over.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
_OWNER = re.compile(r"\.rsvl-(?P<host>[A-Za-z0-9_.-]+)-(?P<pid>\d+)\.")


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{owner_tag()}.", suffix=f"{path.suffix}.tmp", dir=path.parent)
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
        self.path = self.target.with_name(f".{self.target.name}.claim")
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
