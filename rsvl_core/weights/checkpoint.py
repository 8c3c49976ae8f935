"""Reading third-party weight files safely: safetensors natively, pickles only with weights_only.

Every problem becomes a one-line :class:`CheckpointError` naming the file and what was expected;
nothing here executes pickled code.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch

from ..kit.errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
# the one list of weights-file suffixes: a model in one file (".bin" is left out: the shards of a model folder)
WEIGHT_SUFFIXES = (*SAFETENSORS_SUFFIXES, ".pth", ".pt", ".ckpt")
SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024

# Containers that training code wraps a state dict in (Lightning, EMA trainers, ...).
_NESTED_KEYS = ("state_dict", "params_ema", "params", "model", "module")
_HEADERS_ONLY: ContextVar[bool] = ContextVar("rsvl_headers_only", default=False)


@contextmanager
def headers_only() -> Iterator[None]:
    """Within this block `read_state_dict` gives meta tensors (names, shapes, dtypes; no data read), so a
    stage's own loader can be run on the meta device to learn whether a file will load (`rsvl weights check`)."""
    token = _HEADERS_ONLY.set(True)
    try:
        yield
    finally:
        _HEADERS_ONLY.reset(token)


def reading_headers() -> bool:
    """Whether this is a `headers_only` read: a loader then builds its model on the meta device."""
    return _HEADERS_ONLY.get()


def read_state_dict(path: str | Path, expected: str, prefixes: tuple[str, ...] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Read every tensor of a weights file into a flat `name -> tensor` dict on the CPU.

    Args:
        path: a `.safetensors` file, or a `.pth`/`.pt`/`.ckpt`/`.bin` PyTorch file (loaded with
            `torch.load(weights_only=True)`, so a pickle that would run code is refused).
        expected: what the caller wants, for error messages (e.g. "an SR3 generator checkpoint").
        prefixes: read only the tensors whose names start with one of these (a safetensors file then reads
            nothing else: the SDXL text encoders without the UNet, for example).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file not found", expected)
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a weights file", expected)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "file is empty (0 bytes)", expected)

    suffix = path.suffix.lower()
    meta = _HEADERS_ONLY.get()
    if suffix in SAFETENSORS_SUFFIXES or (suffix not in PICKLE_SUFFIXES and _looks_like_safetensors(path)):
        state = _read_safetensors_header(path, expected) if meta else _read_safetensors(path, expected, prefixes)
    elif suffix in PICKLE_SUFFIXES or zipfile.is_zipfile(path):
        state = _read_torch_pickle(path, expected)
    else:
        raise CheckpointError(
            path, f"unsupported file type {suffix or '(no extension)'!r}",
            f"{expected} as .safetensors, .pth, .pt or .ckpt",
        )
    state = canonicalize_state_dict(state, path, expected)
    if prefixes is not None:
        state = {k: v for k, v in state.items() if k.startswith(prefixes)}
    if meta:
        return {k: v if v.is_meta else v.to("meta") for k, v in state.items()}
    return own_memory(state)


ALIGNMENT = 64  # bytes: what PyTorch's CPU allocator guarantees and vectorised kernels assume


def own_memory(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every tensor its own freshly allocated, 64-byte-aligned, writable CPU memory.

    Tensors read from a file are views into its buffer (safetensors: unaligned Python bytes;
    `torch.load(mmap=True)`: the mapped file). Kernels then take another path (results move by ~1e-6),
    CUDA copies and in-place LoRA merges misbehave. Copied one tensor at a time, in place in the dict,
    so the file's memory is released as we go and the peak stays at about one copy.
    """
    for name in list(state):
        tensor = state[name]
        state[name] = torch.empty_like(tensor, memory_format=torch.contiguous_format).copy_(tensor)
        del tensor
    return state


def own_module_memory(module: torch.nn.Module) -> torch.nn.Module:
    """`own_memory` for a model a library loaded (transformers/diffusers `from_pretrained` map the file).

    Tied parameters stay tied (each Parameter object is visited once and keeps its identity).
    """
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type == "cpu" and not is_own_aligned(tensor):
            tensor.data = torch.empty_like(tensor, memory_format=torch.contiguous_format).copy_(tensor)
    return module


def is_own_aligned(tensor: torch.Tensor) -> bool:
    """True when `tensor` lives in memory PyTorch allocated itself (resizable storage), 64-byte aligned."""
    storage = tensor.untyped_storage()
    return storage.resizable() and storage.data_ptr() % ALIGNMENT == 0 and tensor.data_ptr() % ALIGNMENT == 0


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path, expected: str, prefixes: tuple[str, ...] | None = None) -> dict:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if prefixes is None:
            return load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {k: file.get_tensor(k) for k in file.keys() if k.startswith(prefixes)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            path, f"not a readable safetensors file, possibly truncated or corrupt ({first_line(exc)})",
            expected,
        ) from None


def safetensors_header(path: str | Path) -> tuple[int, dict]:
    """The JSON header of a safetensors file and its length in bytes: names, dtypes, shapes and data offsets of
    every tensor, read without touching tensor data (the one header reader: loaders, `rsvl weights`, the nodes'
    file lists). A ValueError says what is wrong with a file that is not one."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("too short for a safetensors file")
        length = int.from_bytes(head, "little")
        if length > min(Path(path).stat().st_size - 8, SAFETENSORS_HEADER_LIMIT):
            raise ValueError("not a safetensors file (header length out of range)")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    return length, header


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, from its header."""
    return [key for key in safetensors_header(path)[1] if key != "__metadata__"]


def _read_safetensors_header(path: Path, expected: str) -> dict:
    """Meta tensors with the file's names, shapes and dtypes, from its header alone."""
    try:
        _, header = safetensors_header(path)
        return {key: torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]], device="meta")
                for key, entry in header.items() if key != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            path, f"not a readable safetensors file, possibly truncated or corrupt ({first_line(exc)})",
            expected,
        ) from None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                       "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


# Training frameworks put their own data objects next to the weights (Lightning's hyper_parameters
# as OmegaConf configs, numpy scalars in loop state). Globals from these modules are replaced by an
# inert placeholder class of ours, so such a file still loads; their code is never imported or run.
# Anything else (os, builtins, subprocess, ...) is refused as before.
INERT_GLOBAL_PREFIXES = ("omegaconf.", "pytorch_lightning.", "lightning.", "lightning_fabric.", "numpy.",
                         "typing.", "pathlib.", "argparse.Namespace")


def _inert_class(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")

    class Inert:
        """Stands in for a non-tensor object in a checkpoint: accepts any state, does nothing."""

        def __init__(self, *args, **kwargs) -> None:
            self.args = args

        def __setstate__(self, state) -> None:
            self.state = state

    Inert.__module__, Inert.__qualname__, Inert.__name__ = module, name, name
    return Inert


def _torch_load(path: Path):
    mmap = zipfile.is_zipfile(path)  # zip checkpoints map lazily instead of being read whole
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if mmap else []
        if not unsafe or not all(name.startswith(INERT_GLOBAL_PREFIXES) for name in unsafe):
            raise
        with torch.serialization.safe_globals([(_inert_class(name), name) for name in unsafe]):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


_REFUSED = "refused: the pickle contains code or objects other than tensors, and rsvl never executes pickled code"


def _read_torch_pickle(path: Path, expected: str) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols: not the user's concern
            return _torch_load(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            KeyError) as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text or _code_globals(path):
            raise CheckpointError(path, _REFUSED, expected) from None
        if isinstance(exc, pickle.UnpicklingError):  # torch's own advice (weights_only=False) is never repeated
            raise CheckpointError(path, f"not a readable PyTorch file ({_unpickler_reason(text)})", expected) from None
        raise CheckpointError(
            path, f"not a readable PyTorch file, possibly truncated or corrupt ({first_line(exc)})",
            expected,
        ) from None


_SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset")


def _code_globals(path: Path) -> list[str]:
    """Names a plain pickle would import and call (GLOBAL / STACK_GLOBAL) outside torch's own and inert ones."""
    import pickletools

    found, strings = [], []
    try:
        with open(path, "rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    strings.append(str(arg))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle at all, or damaged: nothing it could run
        pass
    return [n for n in found if not n.startswith(_SAFE_GLOBALS + INERT_GLOBAL_PREFIXES)]


def _unpickler_reason(text: str) -> str:
    """The unpickler's own complaint from torch's long message, without its advice."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return (rest or (lines[index + 1] if index + 1 < len(lines) else "")) or "unreadable pickle"
    return first_line(Exception(text))


def pickle_problem(path: str | Path) -> str | None:
    """What loading a `.pth`/`.ckpt`/`.bin` would refuse, without keeping its tensors (for `rsvl weights check`):
    the same safe reader as loading, so check and load never disagree. None when it loads."""
    try:
        state = _read_torch_pickle(Path(path), "a PyTorch checkpoint")
    except CheckpointError as exc:
        return exc.problem
    del state
    return None


def canonicalize_state_dict(state: object, path: Path, expected: str) -> dict[str, torch.Tensor]:
    """Unwrap training containers (`state_dict`, `params_ema`, ...) and drop non-tensor entries."""
    for _ in range(3):
        if not isinstance(state, dict):
            break
        nested = next((k for k in _NESTED_KEYS if isinstance(state.get(k), dict)), None)
        if nested is None or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = state[nested]
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a dict of tensors", expected)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(sorted(map(str, state))[:6])
        raise CheckpointError(path, f"contains no tensors (top-level keys: {keys or 'none'})", expected)
    return tensors


def read_json_config(path: str | Path, expected: str, comment_lines: bool = False) -> dict:
    """Read a JSON object file (a model or adapter config); `comment_lines` drops `//` lines (SR3 configs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found", expected)
    try:
        text = path.read_text(encoding="utf-8")
        if comment_lines:
            text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not readable JSON ({exc})", expected) from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "is not a JSON object", expected)
    return data


Blame = tuple[Path | str, str] | Callable[[str], tuple[Path | str, str]]


def check_state(expected: Mapping[str, Sequence[int] | torch.Tensor], given: Mapping[str, torch.Tensor], blame: Blame,
                what: str, same_shape: Callable[[str, tuple, tuple], bool] | None = None,
                extra_unexpected: Iterable[str] = ()) -> None:
    """The one strict key check of every loader: raise a one-line CheckpointError unless `given` has exactly the
    keys of `expected`, each with the expected shape, and floating-point values where the model's are.

    Args:
        expected: key -> shape the model needs, or the model's own (meta) tensor, whose dtype then counts too
            (in the file's own names, so the error names keys as stored).
        given: the file's tensors under those names.
        blame: (file, what that file should be), or key -> (file, what it should be) when several files
            are merged (the SDXL file vs the SUPIR file); the first problem key decides whom to name.
        what: the part being loaded, e.g. "SR3 UNet" or "first_stage_model (VAE)".
        same_shape: when two shapes may differ yet fit (e.g. a conv 1x1 stored as a linear weight).
        extra_unexpected: keys the caller already knows to be unknown (e.g. left over by a name conversion).
    """
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in expected.items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted((set(given) - set(expected)) | set(extra_unexpected))
    fits = same_shape or (lambda key, got, want: got == want)
    wrong = sorted(k for k in set(expected) & set(given) if not fits(k, tuple(given[k].shape), shapes[k]))
    not_float = sorted(k for k in set(expected) & set(given) if isinstance(expected[k], torch.Tensor)
                       and expected[k].is_floating_point() and not given[k].is_floating_point())
    if not (missing or unexpected or wrong or not_float):
        return
    parts = []
    for keys, noun in ((missing, "missing key"), (unexpected, "unexpected key")):
        if keys:
            parts.append(f"{len(keys)} {noun}{'s' if len(keys) > 1 else ''} (e.g. {keys[0]})")
    if wrong:
        key = wrong[0]
        parts.append(f"{len(wrong)} tensor{'s' if len(wrong) > 1 else ''} with the wrong shape (e.g. {key} is "
                     f"{list(given[key].shape)}, the architecture needs {list(shapes[key])})")
    if not_float:
        key = not_float[0]
        parts.append(f"{len(not_float)} tensor{'s' if len(not_float) > 1 else ''} stored as "
                     f"{str(given[key].dtype).removeprefix('torch.')} (e.g. {key}): the weights must be floating point")
    first = (missing or unexpected or wrong or not_float)[0]
    path, wanted = blame(first) if callable(blame) else blame
    raise CheckpointError(path, f"{what}: " + "; ".join(parts), wanted)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def first_line(exc: BaseException) -> str:
    """The first line of an exception message (at most 200 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
