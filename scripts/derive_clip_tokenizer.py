"""Derive the Hugging Face CLIP tokenizer files (vocab.json, merges.txt) from CLIP's BPE merge list.

CLIP ships its byte-pair merges as `bpe_simple_vocab_16e6.txt.gz` (inside the `open_clip_torch` wheel, among
others). Its vocabulary is not stored anywhere: CLIP rebuilds it from the merges at start-up. This script does the
same, offline, so rsvl can ship the two small text files and never download a tokenizer at run time.

Usage:
    pip download open_clip_torch --no-deps -d /tmp/oc
    python scripts/derive_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl [--out rsvl_core/refine/clip_tokenizer]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import zipfile
from pathlib import Path

GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
# CLIP keeps the first 49152 - 256 - 2 merges: 256 byte tokens + 256 end-of-word tokens + merges + 2 specials = 49408.
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "rsvl_core" / "refine" / "clip_tokenizer"


def byte_to_unicode() -> dict[int, str]:
    """Map each byte 0..255 to a printable character (GPT-2/CLIP style), so BPE never sees whitespace/control bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    # Insertion order matters: CLIP's vocabulary lists the printable bytes first, then the shifted ones.
    return mapping


def read_bpe_text(source: Path) -> str:
    """Text of the BPE merge list, from the `.txt.gz` itself or from a wheel (zip) that contains it."""
    if not source.is_file():
        raise SystemExit(f"{source}: file not found (expected {GZ_NAME} or an open_clip_torch wheel)")
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            members = [n for n in wheel.namelist() if n.endswith("/" + GZ_NAME) or n == GZ_NAME]
            if not members:
                raise SystemExit(f"{source}: no {GZ_NAME} inside (expected an open_clip_torch wheel)")
            data = wheel.read(members[0])
    else:
        data = source.read_bytes()
    try:
        return gzip.decompress(data).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{source}: not a gzip-compressed UTF-8 merge list ({exc})") from None


def derive(bpe_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build (vocab, merges) in CLIP's id order: bytes, bytes + '</w>', merged pairs, then the two specials."""
    lines = bpe_text.split("\n")
    # Line 0 is a version header; CLIP uses exactly NUM_MERGES merges after it.
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"merge list has {len(merges)} usable lines or a malformed line (expected {NUM_MERGES} pairs)")
    tokens = list(byte_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"derived {len(vocab)} distinct tokens (expected {VOCAB_SIZE})")
    return vocab, merges


def write_tokenizer_files(vocab: dict[str, int], merges: list[tuple[str, str]], out: Path) -> None:
    """Write vocab.json and merges.txt in the layout `transformers.CLIPTokenizer` reads."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (out / "merges.txt").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help=f"{GZ_NAME} or the open_clip_torch wheel containing it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    vocab, merges = derive(read_bpe_text(args.source))
    write_tokenizer_files(vocab, merges, args.out)
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
