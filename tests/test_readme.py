"""The README's flag table lists every setting with its variable, and its commands exist."""

from __future__ import annotations

import re

import pytest

import settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.name)
def test_every_flag_is_in_the_readme_table(setting: settings.Setting) -> None:
    rows = [line for line in README.splitlines() if line.startswith(f"| `-{setting.name}` |")]
    assert len(rows) == 1, f"README.md needs one table row for -{setting.name}"
    assert f"`{setting.env_name}`" in rows[0]


def test_readme_names_no_flag_that_does_not_exist() -> None:
    documented = set(re.findall(r"^\| `-(\w+)` \|", README, flags=re.MULTILINE))
    assert documented == {s.name for s in settings.SETTINGS}


def test_make_targets_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"^make (\w+)", README, flags=re.MULTILINE)):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"make {target}"


def status_rows() -> list[list[str]]:
    lines = README.splitlines()
    start = lines.index("| `current` | `expected` | `alive` | status | answer |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def values_of(cell: str, any_of: list[str | None]) -> list[str | None]:
    """`started` or `stopped` or missing → ["started", "stopped", None]; any: `any_of`."""
    if cell in ("any", "–"):
        return any_of
    values: list[str | None] = []
    for part in cell.split(" or "):
        part = part.strip()
        if part == "missing":
            values.append(None)
        elif part == "another value":
            values.append("sleeping")
        elif part == "set":
            values.append("1")
        elif part.startswith("`"):
            values.append(part.strip("`"))
        else:
            raise AssertionError(f"unknown cell {cell!r}")
    return values


def test_the_status_table_is_what_the_model_computes() -> None:
    from proxy.errors import code_of
    from resolvers.base import Status
    from resolvers.model import computed_status

    # The values docs/behaviour.md §1 names for each key, and their absence.
    states: list[str | None] = ["started", "starting", "stopped", "stopping", "passivated", None]
    wanted: list[str | None] = ["started", "stopped", "passivated", None]
    rows = status_rows()
    assert len(rows) >= 10
    covered = set()
    for current, expected, alive, status, answer in rows:
        if current == "no `status` directory":
            assert computed_status(False, None, None, None).value == status
            continue
        for c in values_of(current, states):
            for e in values_of(expected, wanted):
                for a in values_of(alive, ["1", None]):
                    got = computed_status(True, c, e, a)
                    assert got.value == status, (current, expected, alive, c, e, a)
                    covered.add((c, e, a))
                    if got is Status.STARTED:
                        assert answer == "forwarded"
                    else:
                        assert answer.startswith(f"{code_of(got)} {got.value} page"), answer
    # Every combination of those values (or their absence) is in some row.
    assert covered >= {(c, e, a) for c in states for e in wanted for a in ["1", None]}
