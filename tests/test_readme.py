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
