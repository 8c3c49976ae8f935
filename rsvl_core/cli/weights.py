"""`rsvl weights list|check|download`: what each stage needs, where it was found, whether it is sound, how to get it.

Registered in `rsvl_core.cli` with `add_weights_parser(sub)` and dispatched with `run_weights(args)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..kit.errors import RsvlError
from ..weights.catalogue import COMFYUI_DIR_ENV, MODELS_DIR_ENV, SEED_CKPT_DIR, WEIGHTS, fix_command
from ..weights.manager import CheckResult, WeightsRow, check_weights, download_weights, list_weights
from .commands import COMMANDS


def add_weights_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`rsvl weights {list,check,download}`."""
    search = argparse.ArgumentParser(add_help=False)
    group = search.add_argument_group("where to look (in this order, after an explicit path)")
    group.add_argument("--models-dir", type=Path, default=None,
                       help=f"a models folder (then ${MODELS_DIR_ENV}, then ./models)")
    group.add_argument("--comfyui-dir", type=Path, default=None,
                       help=f"a ComfyUI install: models/rsvl/<stage>/, models/checkpoints/ (also ${COMFYUI_DIR_ENV})")
    group.add_argument("--ckpt-pth", type=Path, default=None,
                       help=f"the seed's unzipped {SEED_CKPT_DIR} folder (also looked for in ./{SEED_CKPT_DIR})")
    explicit = search.add_argument_group("explicit paths (override the search)")
    for entry in WEIGHTS.values():
        explicit.add_argument(entry.flag, type=Path, default=None, help=f"the {entry.id} {entry.kind}")

    weights = sub.add_parser("weights", help=COMMANDS["weights"],
                             description="The weights each stage needs: where they are found, whether they are "
                                         "sound, and the command that fetches a missing one. Nothing is downloaded "
                                         "except by `rsvl weights download`.")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    wsub.add_parser("list", parents=[search], help="where each stage's weights are (or the command that gets them)")
    check = wsub.add_parser("check", parents=[search],
                            help="check the found weights: readable, sane headers, published sizes and hashes")
    check.add_argument("--sha256", action="store_true",
                       help="also compute every file's sha256 (reads all of it) and compare with published hashes")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    down = wsub.add_parser("download", help="download a stage's weights from the Hugging Face Hub into --models-dir")
    down.add_argument("stage", choices=(*WEIGHTS, "all"), help="which weights ('all': every downloadable one)")
    down.add_argument("--models-dir", type=Path, default=None,
                      help=f"download into this models folder (default: ${MODELS_DIR_ENV}, else ./models)")
    down.add_argument("--variant", choices=sorted({v for entry in WEIGHTS.values() for v in entry.variants}),
                      default=None, help="SUPIR variant (default v0Q, the seed's)")
    down.add_argument("--force", action="store_true", help="download again even if the file is there")
    down.add_argument("-q", "--quiet", action="store_true", help="no hashing progress bar")
    return weights


def _search_kwargs(args: argparse.Namespace) -> dict:
    """The lookup's arguments; the explicit paths come from each table entry's flag (`--sr3` -> args.sr3)."""
    explicit = {entry.id: getattr(args, entry.flag.removeprefix("--").replace("-", "_"), None)
                for entry in WEIGHTS.values()}
    return {"models_dir": args.models_dir, "comfyui_dir": args.comfyui_dir, "ckpt_dir": args.ckpt_pth,
            "explicit": explicit}


def _shown(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _usage_hint(row: WeightsRow) -> str | None:
    """How the other commands reach an item found through a search flag of this one (they search the same places)."""
    root = row.result.root
    if row.path is None or root is None or root.flag in (None, "--models-dir"):
        return None
    if root.flag == "--comfyui-dir":
        return (f"`rsvl upscale` / `rsvl caption` find it with ${COMFYUI_DIR_ENV} set: "
                f"export {COMFYUI_DIR_ENV}={root.path}")
    return f"`rsvl upscale` / `rsvl caption` find it when given the same {root.flag} {root.path}"


def print_list(rows: list[WeightsRow], models_dir: Path | None, out=None) -> None:
    out = sys.stdout if out is None else out
    width = max(len(r.id) for r in rows) + 2
    need = max(len(r.entry.needed_for) for r in rows) + 2
    print(f"{'STAGE':<{width}}{'NEEDED FOR':<{need}}{'STATUS':<11}WHERE", file=out)
    for row in rows:
        status = {"found": "found", "missing": "MISSING" if row.required else "absent"}.get(row.status,
                                                                                          row.status.upper())
        where = f"{_shown(row.path)}  [{row.result.label}]" if row.path is not None else "-"
        print(f"{row.id:<{width}}{row.entry.needed_for:<{need}}{status:<11}{where}", file=out)
    for row in rows:
        notes = list(row.result.notes)
        hint = _usage_hint(row)
        if hint:
            notes.append(hint)
        if row.status == "found" and not notes:
            continue
        print(f"\n{row.id}: {row.entry.title}", file=out)
        for note in notes:
            print(f"  note: {note}", file=out)
        if row.status == "found":
            continue
        if row.status != "missing" or row.required:
            print("  looked in:", file=out)
            for look in row.looked:
                print(f"    {look.label:<28} {_shown(look.path)}  ({look.outcome})", file=out)
        if row.status == "missing" and not row.required:
            print(f"  optional; to add it: {row.fix}", file=out)
        else:
            print(f"  fix: {row.fix}", file=out)


def print_check(results: list[CheckResult], models_dir: Path | None, out=None) -> None:
    out = sys.stdout if out is None else out
    width = max(len(r.id) for r in results) + 2
    for result in results:
        verdict = "ok" if result.ok else ("absent" if result.row.status == "missing" and not result.entry.required
                                          else "PROBLEM")
        where = _shown(result.row.path)
        total = sum(f.size for f in result.files)
        size = f"  {_size(total)}" if result.files else ""
        print(f"{result.id:<{width}}{verdict:<9}{where}{size}", file=out)
        pad = " " * (width + 9)
        for problem in result.problems:
            print(f"{pad}problem: {problem}", file=out)
        for item in result.files:
            name = _shown(item.path) if result.row.path is not None and Path(result.row.path).is_dir() else None
            label = f"{name}: " if name else ""
            if item.problem:
                print(f"{pad}problem: {label}{item.problem}", file=out)
            for note in item.notes:
                print(f"{pad}{label}{note}", file=out)
        for note in result.notes:
            print(f"{pad}{note}", file=out)
        if result.ok or result.row.status in ("ambiguous", "invalid") or verdict == "absent":
            continue  # an ambiguous / unusable place: the problem line says what to do
        fix = fix_command(result.entry, models_dir)
        if result.row.status == "found" and result.entry.downloadable:
            fix += " --force"
        print(f"{pad}fix: {fix}", file=out)


class _HashBar:
    """A tqdm bar for sha256 hashing (one per file)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar, self.label = quiet, None, None

    def __call__(self, step: int, total: int, stage: str, preview=None) -> None:
        from .bars import progress_bar

        if self.label != stage:
            self.close()
            self.bar = progress_bar(total=total, desc=stage, unit="B", unit_scale=True, leave=False,
                                    disable=self.quiet, file=sys.stderr)
            self.label = stage
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_weights(args: argparse.Namespace) -> int:
    """0: all well; 1: something missing or bad (the fix is printed); 2: an error (printed on stderr)."""
    try:
        if args.weights_command == "list":
            if args.models_dir is not None and not args.models_dir.exists():
                print(f"note: --models-dir {args.models_dir}: no such folder (yet); `rsvl upscale` refuses it "
                      "until it exists: files listed from other places are not used with it, the fixes below put "
                      "them there", file=sys.stderr)
            rows = list_weights(**_search_kwargs(args))
            print_list(rows, args.models_dir)
            return 0
        if args.weights_command == "check":
            from ..pipeline import load_problems  # the stages' loaders, on meta tensors: "ok" means "will load"

            bar = _HashBar(args.quiet)
            try:
                results = check_weights(sha256=args.sha256, progress=bar, load_check=load_problems,
                                        **_search_kwargs(args))
            finally:
                bar.close()
            print_check(results, args.models_dir)
            return 0 if all(r.ok or (r.row.status == "missing" and not r.entry.required) for r in results) else 1
        if args.weights_command == "download":
            return _run_download(args)
    except RsvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


def _run_download(args: argparse.Namespace) -> int:
    stages = [s for s, entry in WEIGHTS.items() if entry.downloadable] if args.stage == "all" else [args.stage]
    failed = 0
    for stage in stages:
        bar = _HashBar(args.quiet)
        try:
            variant = args.variant if WEIGHTS[stage].variants else None
            result = download_weights(stage, args.models_dir, variant=variant, force=args.force, progress=bar)
        except RsvlError as exc:
            print(f"error: {stage}: {exc}", file=sys.stderr)
            failed += 1
            continue
        finally:
            bar.close()
        if result.status == "manual":
            print(f"{stage} cannot be downloaded automatically: {result.message}", file=sys.stderr)
            failed += 1
        else:
            print(f"{stage}: {result.message}", file=sys.stderr)
    if args.stage == "all":
        for stage, entry in WEIGHTS.items():
            if entry.downloadable:
                continue
            there = args.models_dir is None or args.models_dir.is_dir()  # nothing downloaded: no folder yet
            rows = list_weights(models_dir=args.models_dir, items=(stage,), env={**os.environ}) if there else []
            if not rows or rows[0].status != "found":
                extra = "" if entry.required else " (optional)"
                print(f"{stage}{extra}: by hand: {fix_command(entry, args.models_dir)}", file=sys.stderr)
    return 1 if failed else 0
