"""One WARNING when etcd goes away and one when it is back, whoever notices first.

`Reachability` is pure (no I/O): these cases drive it as the watchers and the writes do and
read what it logged. The whole-process view of the same rule is in test_logging.py.
"""

from __future__ import annotations

import logging

import pytest

from resolvers.endpoints import Reachability

DOWN = ConnectionRefusedError("refused")
E = "http://127.0.0.1:2379"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().split(" (")[0].split(" at ")[0]
        for r in caplog.records
        if r.name == "resolvers.endpoints" and r.levelno >= logging.WARNING
    ]


@pytest.fixture
def reach(caplog: pytest.LogCaptureFixture) -> Reachability:
    caplog.set_level(logging.INFO, logger="resolvers.endpoints")
    return Reachability()


def test_two_watchers_failing_and_answering_log_one_line_each_way(
    reach: Reachability, caplog: pytest.LogCaptureFixture
) -> None:
    reach.failed("/domains", E, DOWN)
    reach.failed("/services", E, DOWN)
    reach.failed("/domains", E, DOWN)
    assert reach.unreachable
    reach.answered("/domains", E)
    assert reach.unreachable  # /services has not had an answer yet
    reach.answered("/services", E)
    assert not reach.unreachable
    assert warnings(caplog) == ["etcd unreachable", "etcd reachable again"]


def test_a_write_that_notices_first_is_the_one_line_and_the_watchers_say_nothing_more(
    reach: Reachability, caplog: pytest.LogCaptureFixture
) -> None:
    reach.write_failed(E, DOWN)
    assert not reach.unreachable  # only the watchers decide what health says
    reach.write_failed(E, DOWN)
    reach.failed("/domains", E, DOWN)
    reach.failed("/services", E, DOWN)
    reach.write_answered(E)  # a write got through while a watcher still waits: not over
    reach.answered("/domains", E)
    reach.answered("/services", E)
    assert warnings(caplog) == ["etcd unreachable", "etcd reachable again"]


def test_writes_failing_while_the_watch_answers_are_logged_and_their_end_too(
    reach: Reachability, caplog: pytest.LogCaptureFixture
) -> None:
    # A cluster without quorum still answers reads: only the writes can tell.
    reach.write_failed(E, DOWN)
    reach.write_failed(E, DOWN)
    reach.write_answered(E)
    reach.write_answered(E)
    assert warnings(caplog) == ["etcd unreachable", "etcd reachable again"]


def test_a_write_answered_with_nothing_announced_logs_nothing(
    reach: Reachability, caplog: pytest.LogCaptureFixture
) -> None:
    reach.write_answered(E)
    reach.answered("/domains", E)  # never failed
    assert warnings(caplog) == []


def test_a_problem_is_one_error_and_its_end_one_line(
    reach: Reachability, caplog: pytest.LogCaptureFixture
) -> None:
    reach.failed("/domains", E, DOWN, problem="etcd refused the credentials")
    reach.failed("/domains", E, DOWN, problem="etcd refused the credentials")
    reach.write_failed(E, DOWN)  # the outage line is not added to the problem's
    reach.answered("/domains", E)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert warnings(caplog) == ["etcd refused the credentials", "etcd reachable again"]
