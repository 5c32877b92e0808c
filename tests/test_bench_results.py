"""`make bench` and `make soak` leave the tree clean unless asked to record their results.

The benchmarks take minutes, so this checks the one function that picks where results are
written, against git itself: unrecorded paths must be ignored, recorded ones tracked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.options import recording, without_paths
from bench.report import result_stems
from bench.scale import LAG_FAMILY, OverGoal
from tests.support import ROOT


def git(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)


def files_of(stems: list[Path]) -> list[Path]:
    return [stem.with_name(stem.name + ext) for stem in stems for ext in (".json", ".md")]


@pytest.mark.parametrize("name", ["latest", "soak"])
def test_an_unrecorded_run_writes_only_ignored_files(name: str) -> None:
    paths = files_of(result_stems(name, record=False, stamp="20260101-000000"))
    assert paths
    for path in paths:
        relative = str(path.relative_to(ROOT))
        assert git("check-ignore", "-q", relative).returncode == 0, f"{relative} not ignored"
        assert git("ls-files", "--error-unmatch", relative).returncode != 0


@pytest.mark.parametrize("name", ["latest", "soak"])
def test_a_recorded_run_writes_the_tracked_results(name: str) -> None:
    paths = files_of(result_stems(name, record=True, stamp="20260101-000000"))
    tracked = [p for p in paths if git("ls-files", "--error-unmatch", str(p)).returncode == 0]
    assert sorted(tracked) == sorted(
        ROOT / "bench" / "results" / f"{name}{ext}" for ext in (".json", ".md")
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("", False), ("0", False), (None, False)]
)
def test_recording_is_asked_for_by_a_variable(value: str | None, expected: bool) -> None:
    environ = {} if value is None else {"BENCH_RECORD": value}
    assert recording("BENCH_RECORD", environ) is expected


def test_a_recorded_command_holds_no_path_of_this_machine() -> None:
    reference = "/srv/ref/bin/gogeta -port {port} -templateDir=/srv/ref/templates/ -v"
    shown = without_paths(f"BENCH_REFERENCE={reference} BENCH_SCALE=100000 make bench")
    assert shown == (
        "BENCH_REFERENCE=<…/gogeta> -port {port} -templateDir=<…/templates> -v"
        " BENCH_SCALE=100000 make bench"
    )
    assert without_paths("wrk -t1 http://127.0.0.1:80/small a/b") == (
        "wrk -t1 http://127.0.0.1:80/small a/b"  # a URL's path and a relative one stay
    )


def test_the_loop_lag_of_a_window_is_two_scrapes_difference() -> None:
    bounds = ("0.005", "0.01", "0.025", "+Inf")
    before = {LAG_FAMILY: dict(zip(bounds, (90.0, 95.0, 99.0, 100.0), strict=True))}
    after = {LAG_FAMILY: dict(zip(bounds, (180.0, 190.0, 197.0, 200.0), strict=True))}
    lag = OverGoal.between(LAG_FAMILY, before, after)
    assert (lag.observed, lag.over_goal, lag.under_ms) == (100, 5, None)  # 2 over 25 ms
    later = {LAG_FAMILY: dict(zip(bounds, (140.0, 155.0, 159.0, 160.0), strict=True))}
    quiet = OverGoal.between(LAG_FAMILY, before, later)
    assert (quiet.observed, quiet.over_goal, quiet.under_ms) == (60, 0, 10)
    with pytest.raises(RuntimeError, match="no bucket at 10 ms"):
        OverGoal.between(LAG_FAMILY, {}, {LAG_FAMILY: {"0.05": 1.0, "+Inf": 1.0}})
