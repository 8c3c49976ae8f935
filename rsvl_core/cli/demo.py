"""`rsvl demo`: prove the install (tiny random models in the real formats, the real pipeline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .bars import say
from .commands import COMMANDS


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help=COMMANDS["demo"])
    demo.add_argument("--models-dir", type=Path, default=None,
                      help="write the tiny models here (laid out like real weights) and keep them")
    demo.add_argument("-o", "--output", type=Path, default=None, help="where to write the result")
    demo.add_argument("--input", type=Path, default=None,
                      help="the image to run on (default: the bundled 100x100 aerial sample)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..demo import DEMO_SCALE, run_demo
    from .progress import CliEvents, print_summary

    summary, record = run_demo(args.models_dir, args.output, args.input, CliEvents(args.quiet, DEMO_SCALE), say)
    print_summary(summary)
    if record is None:
        return 1
    say(f"caption (random weights, so random words): {record['caption']!r}")
    if args.output is None:
        say("demo passed (the output was in a temporary folder; pass --output DIR to keep it)")
    else:
        say(f"demo passed: {summary.written[0]}")
    if args.models_dir is not None:
        say(f"tiny models kept in {args.models_dir}; try (minutes on a CPU): rsvl upscale IMAGE --output DIR "
            f"--models-dir {args.models_dir} --preset cpu-quick")
    return 0
