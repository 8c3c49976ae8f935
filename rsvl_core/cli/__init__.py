"""The `rsvl` command line: argument parsing and printing only; the work is `rsvl_core.pipeline`'s job API.

One module per command: upscale.py, caption.py, weights.py, demo.py; progress.py shows bars and summaries.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import RsvlError
from . import caption, demo, upscale, weights
from .progress import print_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsvl",
        description="Remote-sensing super-resolution: a fidelity stage (SR3 or any SR model), caption, "
                    "SUPIR/SDXL refinement.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    upscale.add_upscale_parser(sub)
    caption.add_caption_parser(sub)
    weights.add_weights_parser(sub)
    demo.add_demo_parser(sub)
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "upscale":
        summary = upscale.run_upscale(args)
        print_summary(summary)
        return 2 if summary.stopped else 1 if summary.failed else 0
    if args.command == "caption":
        caption.run_caption(args)
        return 0
    if args.command == "weights":
        return weights.run_weights(args)
    if args.command == "demo":
        return demo.run(args)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except RsvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no partial output was written", file=sys.stderr)
        return 130
