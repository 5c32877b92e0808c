"""The repository documents itself: citations point at docs/behaviour.md, whose sections exist,
and no file refers to a document or a path outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

BEHAVIOUR = ROOT / "docs" / "behaviour.md"

# Folders that are not the project's: tools, caches, runs (all git-ignored).
_NOT_OURS = {".git", ".venv", ".run", "__pycache__", ".mypy_cache", ".ruff_cache", "pages"}
_NOT_OURS |= {".pytest_cache", ".hypothesis", "runs"}

# Each pattern is written so that it does not match its own text: this file is scanned too.
FORBIDDEN = {
    "a citation of an outside spec": re.compile(r"\bS[P]EC\b"),
    "an outside notes file": re.compile(r"(?<!bench/)NOTE[S]\.md"),
    "an outside shared folder": re.compile(r"(?<![\w.-])share[d]/"),
    "an absolute path of this machine": re.compile(r"(?<![\w.])/(?:wor[k]|roo[t])/"),
    "a path in someone's home": re.compile(r"(?<![\w.])~[/]"),
}

# `docs/behaviour.md §2.4`, `docs/behaviour.md §1, §3.1`, `docs/behaviour.md §2.4–§2.6`.
CITATION = re.compile(r"docs/behaviour\.md ((?:§\d+(?:\.\d+)*(?:, |–| and )?)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? \S", flags=re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def repository_files() -> list[Path]:
    """The project's text files: what git tracks or would add, else a walk of the tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = sorted(set(filter(None, listed.split("\0"))))
        paths = [ROOT / name for name in names]
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for top, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in _NOT_OURS]
            paths.extend(Path(top) / f for f in files)
    texts = []
    for path in paths:
        if path.is_symlink() or not path.is_file():
            continue  # `.venv` may be a link to a virtualenv elsewhere
        if set(path.relative_to(ROOT).parts) & _NOT_OURS:
            continue
        try:
            path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images and other binaries
        texts.append(path)
    return texts


FILES = repository_files()


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def headings() -> set[str]:
    return set(HEADING.findall(text_of(BEHAVIOUR)))


def test_the_scan_sees_the_project() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in FILES}
    assert {"README.md", "docs/behaviour.md", "proxy/app.py", "tests/test_docs.py"} <= names


@pytest.mark.parametrize("what", FORBIDDEN)
def test_no_file_refers_outside_the_repository(what: str) -> None:
    pattern = FORBIDDEN[what]
    found = []
    for path in FILES:
        for number, line in enumerate(text_of(path).splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, f"{what}:\n" + "\n".join(found)


def test_behaviour_sections_are_numbered_once_each() -> None:
    numbers = HEADING.findall(text_of(BEHAVIOUR))
    assert len(numbers) == len(set(numbers)), numbers
    top = [n for n in numbers if "." not in n]
    assert top == [str(i) for i in range(1, len(top) + 1)], top
    for number in numbers:
        parent = number.rpartition(".")[0]
        assert not parent or parent in numbers, f"§{number} has no §{parent}"


def test_every_cited_section_exists() -> None:
    known = headings()
    cited: dict[str, list[str]] = {}
    for path in FILES:
        for number, line in enumerate(text_of(path).splitlines(), 1):
            for match in CITATION.finditer(line):
                for section in SECTION.findall(match.group(1)):
                    cited.setdefault(section, []).append(f"{path.relative_to(ROOT)}:{number}")
    assert len(cited) >= 10, "the code cites docs/behaviour.md: the pattern found too little"
    missing = {s: where for s, where in cited.items() if s not in known}
    assert not missing, f"cited sections missing from docs/behaviour.md: {missing}"


def test_behaviour_refers_only_to_its_own_sections() -> None:
    """`(§3.3)` inside docs/behaviour.md is one of its sections; RFC sections are not ours."""
    known = headings()
    text = re.sub(r"RFC \d+ §[\d.]+", "", text_of(BEHAVIOUR))
    missing = {s for s in SECTION.findall(text) if s.rstrip(".") not in known}
    assert not missing, missing


def test_markdown_links_stay_inside_the_repository() -> None:
    broken = []
    for path in FILES:
        if path.suffix != ".md":
            continue
        for target in LINK.findall(text_of(path)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same page
            resolved = (path.parent / target.partition("#")[0]).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken
