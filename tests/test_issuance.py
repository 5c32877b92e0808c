"""The pure parts of certificates on demand (docs/behaviour.md §10): the per-name backoff,
when a certificate is due for renewal, the mirror of challenge answers."""

from __future__ import annotations

import datetime

import pytest

import settings
from issuance.backoff import after_failure
from issuance.orders import renewal_due
from resolvers.certs import ChallengeTree
from resolvers.nodes import Node
from tests.pki import issue


def test_backoff_starts_at_a_minute_and_doubles_to_an_hour() -> None:
    failure = None
    delays = []
    for _ in range(9):
        failure = after_failure(failure, "refused", 1000.0)
        delays.append(failure.retry_at - failure.at)
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert failure is not None and failure.count == 9 and failure.reason == "refused"


def test_renewal_is_due_past_two_thirds_of_the_lifetime() -> None:
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    fresh = issue("a.test", not_before=now - 10 * day, not_after=now + 80 * day).chain
    old = issue("a.test", not_before=now - 70 * day, not_after=now + 20 * day).chain
    assert not renewal_due(fresh, now.timestamp())
    assert renewal_due(old, now.timestamp())
    assert renewal_due("not a certificate", now.timestamp())


def test_the_challenge_mirror_follows_tokens_only() -> None:
    tree = ChallengeTree("/certs/.acme/challenges")
    tree.load(
        [
            Node("/certs/.acme/challenges/tok1", "tok1.thumb", False),
            Node("/certs/.acme/challenges/a/b", "nested: not a token", False),
            Node("/certs/other", "elsewhere", False),
        ]
    )
    assert tree.answers == {"tok1": "tok1.thumb"}
    assert tree.apply(Node("/certs/.acme/challenges/tok2", "tok2.thumb", False), "create")
    assert tree.answer("tok2") == "tok2.thumb"
    assert tree.apply(Node("/certs/.acme/challenges/tok1", None, False), "expire")
    assert tree.answer("tok1") is None
    assert not tree.apply(Node("/certs/a.test/cert", "pem", False), "set")
    assert tree.apply(Node("/certs/.acme/challenges", None, True), "delete")
    assert tree.answers == {}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-acmeDirectory", "https://acme.test/dir"], "-acmeDirectory needs -tlsPort"),
        (
            ["-acmeDirectory", "https://acme.test/dir", "-tlsPort", "8443", "-resolverType", "Env"],
            "needs -resolverType IoEtcd",
        ),
        (["-acmeDirectory", "ftp://acme.test/dir", "-tlsPort", "8443"], "not an http(s) URL"),
    ],
)
def test_acme_settings_that_cannot_work_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(
        settings.SettingError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        settings.parse(argv, {})
