"""The `rsvl` command line: argument parsing and printing only; the work is `rsvl_core.pipeline`'s job API.

One module per command: upscale.py, batch.py, caption.py, weights.py, demo.py; progress.py shows bars and
summaries.
The command modules (and so torch) are imported only when a command runs or shows its own help.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..kit.errors import RsvlError, Terminated
from .commands import COMMANDS, DESCRIPTION


def top_level_parser() -> argparse.ArgumentParser:
    """`rsvl --help`: the commands only, built without importing the engine."""
    parser = argparse.ArgumentParser(prog="rsvl", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text)
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `command`, that command's parser alone (only its module, and what it needs, loads).
    Each command's module here has `add_<command>_parser`."""
    import importlib

    parser = argparse.ArgumentParser(prog="rsvl", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:  # in `rsvl --help` order
        if command is None or name == command:
            module = importlib.import_module(f".{COMMAND_MODULES.get(name, name)}", __name__)
            getattr(module, f"add_{name}_parser")(sub)
    return parser


COMMAND_MODULES = {"eval": "evaluate"}  # a command whose module in this package is not named after it


def dispatch(args: argparse.Namespace) -> int:
    if args.command in ("upscale", "batch"):
        from . import batch, upscale

        summary = upscale.run_upscale(args) if args.command == "upscale" else batch.run_batch_command(args)
        from .progress import print_summary  # the engine's events: loaded once the run's values are checked

        print_summary(summary)
        return 2 if summary.stopped else 1 if summary.failed else 0
    if args.command == "caption":
        from . import caption

        return 1 if caption.run_caption(args).failed else 0
    if args.command == "weights":
        from . import weights

        return weights.run_weights(args)
    if args.command == "demo":
        from . import demo

        return demo.run(args)
    if args.command == "eval":
        from . import evaluate

        return evaluate.print_eval_summary(evaluate.run_eval(args), args.output)
    return 2


def main(argv: list[str] | None = None, *, collector_paused: bool = False) -> int:
    """Parse `argv` and run its command; the exit code. With `collector_paused` (the console command), the garbage
    collector, paused before anything was imported, resumes once the command's parser is built (`end_startup`)."""
    from .tally import interrupted_line, tallying

    argv = sys.argv[1:] if argv is None else argv
    with terminate_as_interrupt(), tallying() as tally:
        try:
            if not argv or argv[0] not in COMMANDS:  # `rsvl`, `rsvl --help`, a typo: no engine needed to answer
                top_level_parser().parse_args(argv)
            args = build_parser(argv[0]).parse_args(argv)
            if collector_paused:
                end_startup()
            return dispatch(args)
        except RsvlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print(interrupted_line(tally, terminated=isinstance(exc, Terminated)), file=sys.stderr)
            return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def end_startup() -> None:
    """Resume the garbage collector with what startup imported left out of every later collection.

    torch's ~1,100 modules and ours live until the process ends, and a full collection walks every object it
    tracks: during startup three of them plus ~400 younger ones cost ~0.25 CPU s, a sixth of a one-image run's
    work around the model, and found nothing to free. Startup runs with the collector paused; here its objects
    move to the permanent generation (`gc.freeze`) and collection resumes for what the run makes."""
    gc.freeze()
    gc.enable()


def console() -> None:
    """The `rsvl` console command: `main`, then the process ends without tearing the interpreter down.

    After a run, Python would free every module and object of torch one by one (about 0.4 s of CPU per process, a
    tenth of a one-image run). Startup runs with the garbage collector paused (`end_startup`). Everything a normal
    exit does that matters is done first: other threads joined, the `atexit` handlers run (logging, temporary
    files, Ray's shutdown, multiprocessing), standard streams flushed. Then `os._exit` with main's code."""
    # numpy's OpenBLAS starts a thread per core as it loads, and each spins (~0.05 CPU s on the 2-core developers'
    # machine) before it first sleeps; rsvl does no BLAS work in numpy, so they sleep at once unless the user says
    # otherwise. OpenBLAS reads this as numpy loads, which `import rsvl_core.cli` does not do.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    gc.disable()  # until the command's parser is built: `end_startup`
    code = main(collector_paused=True)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what interpreter shutdown runs first (no public name; stable since Python 3.0)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`) unwinds the run as Ctrl-C does (temp files and claims removed, one line
    said), instead of ending the process where it stands. Only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
