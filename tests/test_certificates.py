"""The certificate table without sockets or etcd (docs/behaviour.md §9).

`CertTree` (resolvers/certs.py) fed with nodes as a source feeds it; the name rules and
the reading of a certificate's end of validity (transport/tls.py); `Certificates` turning
pairs into contexts, with the certificates made by the tests.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509

from resolvers.certs import CertPair, CertTree
from resolvers.nodes import Node
from tests.pki import issue
from transport.tls import (
    CertificateProblem,
    Certificates,
    context_for_pair,
    is_certificate_name,
    leaf_not_after,
    names_for,
)


def test_the_tree_keeps_pairs_and_says_what_changed() -> None:
    tree = CertTree("/certs")
    tree.load(
        [
            Node("/certs", dir=True),
            Node("/certs/A.example.com", dir=True),
            Node("/certs/A.example.com/cert", "C"),
            Node("/certs/A.example.com/key", "K"),
            Node("/certs/b.example.com/cert", "C2"),
            Node("/certs/b.example.com/other", "ignored"),
        ]
    )
    assert tree.take_changes() == {
        "a.example.com": CertPair("C", "K"),
        "b.example.com": CertPair("C2", None),
    }
    assert tree.take_changes() == {}
    assert tree.apply(Node("/certs/b.example.com/key", "K2"), "set")
    assert not tree.apply(Node("/certs/b.example.com/key", "K2"), "set")  # same value
    assert not tree.apply(Node("/certs/b.example.com/notes", "x"), "set")
    assert not tree.apply(Node("/domains/b.example.com/key", "x"), "set")
    assert tree.take_changes() == {"b.example.com": CertPair("C2", "K2")}
    assert tree.apply(Node("/certs/a.example.com/key"), "delete")
    assert tree.apply(Node("/certs/b.example.com", dir=True), "delete")
    assert tree.take_changes() == {"a.example.com": CertPair("C", None), "b.example.com": None}
    # A reload reports only what differs from what was there.
    tree.load([Node("/certs/a.example.com/cert", "C"), Node("/certs/c.example.com/cert", "C3")])
    assert tree.take_changes() == {"c.example.com": CertPair("C3", None)}
    assert tree.apply(Node("/certs", dir=True), "delete")
    assert tree.take_changes() == {"a.example.com": None, "c.example.com": None}


@pytest.mark.parametrize(
    ("server_name", "names"),
    [
        ("a.example.com", ("a.example.com", "*.example.com")),
        ("A.Example.com.", ("a.example.com", "*.example.com")),
        ("x.a.example.com", ("x.a.example.com", "*.a.example.com")),
        ("localhost", ("localhost",)),
    ],
)
def test_a_name_is_served_by_itself_then_by_the_wildcard_one_label_up(
    server_name: str, names: tuple[str, ...]
) -> None:
    assert names_for(server_name) == names


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a.example.com", True),
        ("*.example.com", True),
        ("localhost", True),
        ("*", False),
        ("a.*.example.com", False),
        ("*a.example.com", False),
        ("**.example.com", False),
        ("a..example.com", False),
        ("-a.example.com", False),
        ("a b.example.com", False),
    ],
)
def test_certificate_names(name: str, valid: bool) -> None:
    assert is_certificate_name(name) is valid


@pytest.mark.parametrize("days", [3, 400, 365 * 40])  # UTCTime, and GeneralizedTime past 2049
def test_the_end_of_validity_is_read_from_the_leaf(days: int) -> None:
    end = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days)
    leaf = issue("a.example.com", not_after=end)
    expected = x509.load_pem_x509_certificate(leaf.chain.encode()).not_valid_after_utc
    assert leaf_not_after(leaf.chain) == expected.timestamp()


def test_contexts_are_built_from_pairs_and_broken_pairs_say_why() -> None:
    a, b = issue("a.example.com"), issue("b.example.com")
    context, _ = context_for_pair(a.chain, a.key)
    assert context.minimum_version.name == "TLSv1_2"
    with pytest.raises(CertificateProblem, match="does not match"):
        context_for_pair(a.chain, b.key)
    with pytest.raises(CertificateProblem, match="no PEM private key"):
        context_for_pair(a.chain, "garbage")
    with pytest.raises(CertificateProblem, match="no PEM certificate"):
        context_for_pair("garbage", a.key)
    broken_key = a.key.replace(a.key.splitlines()[2], "A" * 64)
    with pytest.raises(CertificateProblem, match="invalid PEM") as problem:
        context_for_pair(a.chain, broken_key)
    assert a.key.splitlines()[1] not in str(problem.value)  # never quotes the key


def test_the_table_picks_exact_then_wildcard_and_forgets_deleted_names() -> None:
    exact, wildcard = issue("a.example.com"), issue("*.example.com")
    table = Certificates()
    table.update(
        {
            "a.example.com": CertPair(exact.chain, exact.key),
            "*.example.com": CertPair(wildcard.chain, wildcard.key),
            "broken.example.com": CertPair(exact.chain, wildcard.key),
        }
    )
    a = table.context_for("a.example.com")
    star = table.context_for("b.example.com")
    assert a is not None and star is not None and a is not star
    assert table.context_for("x.b.example.com") is None
    # A broken pair is skipped: its name is served as if it had none, by the wildcard here.
    assert table.context_for("broken.example.com") is star
    described = table.describe()["hostnames"]
    assert described["broken.example.com"]["state"] == "skipped"
    table.update({"a.example.com": None})
    assert table.context_for("a.example.com") is star
    expiries, states = table.figures()
    assert [h for h, _ in expiries] == ["*.example.com"]
    assert states == {"ok": 1, "skipped": 1}
