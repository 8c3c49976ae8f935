"""README.md and docs/*.md against the project: every `rsvl` command and flag they show exists in the real parser,
every relative link and picture points at a file (and heading) that exists, and README stays short."""

from __future__ import annotations

import argparse
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 300

# Flags the docs show on their own (a span that starts with `--`) that belong to another program, with the file
# that defines them where that file is ours (None: ComfyUI's own command line, outside this repository).
OTHER_PROGRAMS_FLAGS = {
    "--browser-artifacts": "tests/conftest.py",      # our pytest option
    "--full": "benchmarks/step_cache.py",            # the benchmarks' full-size switch
    "--front-end-root": None,                        # ComfyUI's main.py
    "--preview-method": None,                        # ComfyUI's main.py
}

FENCE = re.compile(r"^\s*(```|~~~)")
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
RSVL_COMMAND = re.compile(r"(?<![\w/.\[-])rsvl\s+([A-Za-z][\w-]*)(?:\s+([A-Za-z][\w-]*))?")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_TAG = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


# -- reading Markdown ---------------------------------------------------------------------------------------------

def split_code(markdown: str) -> tuple[list[str], str]:
    """(the lines of every fenced code block, with `\\`-continued lines joined; the text outside the blocks)."""
    block_lines, prose, inside, pending = [], [], False, ""
    for line in markdown.split("\n"):
        if FENCE.match(line):
            inside = not inside
            prose.append("")
            continue
        if not inside:
            prose.append(line)
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        block_lines.append(pending + line)
        pending = ""
    return block_lines, "\n".join(prose)


def code_pieces(markdown: str) -> list[str]:
    """Everything a page shows as code: each line of its code blocks and each inline span (a span may wrap)."""
    block_lines, prose = split_code(markdown)
    spans = [" ".join(span.split()) for span in SPAN.findall(prose)]
    return [line.strip() for line in block_lines] + spans


def shell_command(piece: str) -> str:
    """The piece without a shell comment (` # ...`) and without quoted arguments (captions, prompts)."""
    return QUOTED.sub(" ", piece.split(" #")[0])


# -- the real command line ----------------------------------------------------------------------------------------

def parser_options(parser: argparse.ArgumentParser) -> tuple[set[str], dict[str, argparse.ArgumentParser]]:
    """A parser's option strings and its subcommands (argparse has no public walk: its actions are the record)."""
    options, commands = set(), {}
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            commands.update(action.choices)
    return options, commands


@cache
def cli() -> dict[str, tuple[set[str], set[str]]]:
    """{command: (every option it or its own subcommands take, its subcommands)} of `rsvl`."""
    from rsvl_core.cli import build_parser

    top_options, commands = parser_options(build_parser())
    table = {}
    for name, parser in commands.items():
        options, nested = parser_options(parser)
        options |= top_options
        for sub in nested.values():
            options |= parser_options(sub)[0]
        table[name] = (options, set(nested))
    return table


def cli_problems(markdown: str, table: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """What a page shows as `rsvl` code that the command line does not have.

    Checked: every `rsvl <command> [<subcommand>]` anywhere in code; the flags of code lines and spans that start
    with `rsvl` (against that command's options); spans that start with a long flag (against every command's
    options, besides OTHER_PROGRAMS_FLAGS; a lone short flag such as `-s` could be anybody's). Lines and spans of
    other programs (pip, pytest, ray, curl, comfy, ...) are theirs: their flags are not looked at.
    """
    every_option = set().union(*(options for options, _ in table.values()))
    problems = []
    for piece in code_pieces(markdown):
        command = shell_command(piece)
        for name, sub in RSVL_COMMAND.findall(command):
            if name not in table:
                problems.append(f"`rsvl {name}` is not a command: {piece!r}")
            elif table[name][1] and sub and sub not in table[name][1]:
                problems.append(f"`rsvl {name} {sub}` is not a subcommand: {piece!r}")
        words = command.split()
        if len(words) >= 2 and words[0] == "rsvl" and words[1] in table:
            known = table[words[1]][0]
        elif words and words[0].startswith("--"):
            known = every_option | set(OTHER_PROGRAMS_FLAGS)
        else:
            continue
        for flag in FLAG.findall(command):
            if flag not in known:
                problems.append(f"{flag} is not an option of {' '.join(words[:2])!r}: {piece!r}")
    return problems


# -- links --------------------------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in split_code(markdown)[1].split("\n"):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_problems(page: Path) -> list[str]:
    """Relative links and pictures of a page whose file (or, for a Markdown file, heading) does not exist."""
    markdown = page.read_text(encoding="utf-8")
    prose = SPAN.sub("", split_code(markdown)[1])
    problems = []
    for target in LINK.findall(prose) + IMG_TAG.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {file.name}")
    return problems


# -- the checks ---------------------------------------------------------------------------------------------------

def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_docs_commands_and_flags_exist_in_the_cli(page):
    assert cli_problems(page.read_text(encoding="utf-8"), cli()) == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_docs_links_and_pictures_resolve(page):
    assert link_problems(page) == []


def test_docs_readme_is_at_most_300_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"


def test_docs_every_page_is_linked_from_readme():
    readme = README.read_text(encoding="utf-8")
    assert DOCS
    for page in DOCS:
        assert f"(docs/{page.name})" in readme or f"(docs/{page.name}#" in readme, page.name


def test_docs_other_programs_flags_are_defined_where_said():
    for flag, source in OTHER_PROGRAMS_FLAGS.items():
        if source:
            assert flag in (ROOT / source).read_text(encoding="utf-8"), (flag, source)


# -- the checker itself can fail ----------------------------------------------------------------------------------

def test_docs_checker_catches_a_made_up_flag_command_and_subcommand():
    table = cli()
    assert cli_problems("```bash\nrsvl upscale in/ -o out --scale 4 --made-up-flag 3   # a comment --not-checked\n```",
                        table) == ["--made-up-flag is not an option of 'rsvl upscale': "
                                   "'rsvl upscale in/ -o out --scale 4 --made-up-flag 3   # a comment --not-checked'"]
    assert len(cli_problems("Run `rsvl upscale x\n  --no-such-option` here.", table)) == 1  # a span that wraps
    assert len(cli_problems("```\nrsvl eval hr/ --scale 4 \\\n    --methods full --bogus\n```", table)) == 1
    assert len(cli_problems("The `--no-such-flag` flag.", table)) == 1
    assert cli_problems("`rsvl frobnicate in/`", table) == ["`rsvl frobnicate` is not a command: 'rsvl frobnicate in/'"]
    assert len(cli_problems("`rsvl weights fetch sdxl`", table)) == 1
    assert len(cli_problems("`rsvl caption x.png --window-size 64`", table)) == 1  # an option of another command


def test_docs_checker_leaves_other_programs_and_prose_alone():
    table = cli()
    assert cli_problems("\n".join([
        "`pip install torch --index-url https://x`, `python3 -m pytest -q -m \"not slow\" tests`",
        "```bash", "ray start --head --port 6379", "curl -X POST http://127.0.0.1:8188/prompt", "```",
        "the `rsvl_core` package, `custom_nodes/rsvl/requirements.txt`, the `rsvl` command, `--front-end-root`",
        "`rsvl upscale x --caption \"a --not-a-flag here\"`, `rsvl weights check [--sha256]`, `rsvl weights list`",
    ]), table) == []


def test_docs_link_checker_catches_a_missing_file_and_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Where the weights go\n", encoding="utf-8")
    (tmp_path / "pic.jpg").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "[ok](other.md) [ok](other.md#where-the-weights-go) ![ok](pic.jpg) [web](https://example.org/x.md)",
        "[bad](missing.md) ![bad](nothere.png) [bad](other.md#no-such-heading) [bad](#nowhere)",
        "`[not a link](inside-code.md)`", "```", "[not a link](in-a-block.md)", "```",
    ]), encoding="utf-8")
    assert [problem.split(":")[0] for problem in link_problems(page)] == [
        "missing.md", "nothere.png", "other.md#no-such-heading", "#nowhere"]
