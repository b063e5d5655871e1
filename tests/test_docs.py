"""The README and the pages in docs/ as a reader follows them: every link leads somewhere, every `quarklab`
command they show is one the command line accepts, every Python block compiles, and the README's first screen
says what quarklab is and how to start."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from quarklab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def blocks(page: Path, *languages: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(page.read_text()) if m.group(1) in languages]


def quarklab_commands(page: Path) -> list[list[str]]:
    """The argument lists of the `quarklab ...` commands a page shows, in its bash blocks (continued lines
    joined, comments dropped, up to a pipe or redirection) and as inline code naming a run directory, whether
    run as `quarklab`, a venv's `quarklab` or `-m quarklab.cli`."""
    text = page.read_text()
    lines = [line for block in blocks(page, "bash", "sh") for line in block.replace("\\\n", " ").splitlines()]
    inline = re.findall(r"`((?:quarklab|accelerate launch) [^`]*)`", FENCE.sub("", text))
    lines += [code for code in inline if "--run-dir" in code]  # whole commands, not a name such as `quarklab eval`
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word == "quarklab.cli" and i and words[i - 1] == "-m" or word == "quarklab" \
                    or word.endswith("/quarklab"):
                args = words[i + 1:]
                ends = [j for j, w in enumerate(args) if w in {">", "|", "&&", ";", "2>&1"}]
                commands.append(args[:ends[0]] if ends else args)
                break
    return commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_file_and_heading(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{page.name} links to {target}: no such heading in {linked.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_is_accepted(page):
    parser = build_parser()
    for args in quarklab_commands(page):
        if "--help" in args or "--version" in args or "-h" in args:
            continue
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{page.name} shows `quarklab {' '.join(args)}`, which the command line refuses")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_block_compiles(page):
    for block in blocks(page, "python"):
        compile(block, f"{page.name} python block", "exec")


def test_the_readme_starts_with_what_quarklab_is_and_how_to_start():
    lines = (ROOT / "README.md").read_text().splitlines()
    first_screen = "\n".join(lines[:25])
    assert "research toolkit for Quark-style alignment" in first_screen
    assert "make demo" in first_screen and "make test" in first_screen
    assert lines.index("## Quickstart") < 30
    assert len(lines) <= 262  # half the 524 lines it had before the details moved to docs/


def test_the_commands_are_found():
    """The extraction above finds the README's commands (else the acceptance test would pass on nothing)."""
    found = quarklab_commands(ROOT / "README.md")
    assert ["train", "--run-dir", "runs/tiny"] in found
    assert any(args[:2] == ["notebooks", "sweep"] for args in found)
    assert len(quarklab_commands(ROOT / "docs" / "scaling.md")) >= 5  # accelerate launch -m quarklab.cli lines too


def test_the_layout_page_names_every_module():
    """docs/layout.md lists the package module by module: a module it does not name is a stale page."""
    import quarklab

    package = Path(quarklab.__file__).parent
    layout = (ROOT / "docs" / "layout.md").read_text()
    for path in sorted(package.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        assert re.search(rf"\b{path.stem}\b", layout), f"docs/layout.md does not name {path.relative_to(package)}"
